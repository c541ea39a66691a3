//! Nothing lost: a receive resumes after a crash, receivers follow the content across a server
//! or relay restart, a whole copy is not fetched again, a full disk and a changed input stop
//! with their exit codes, and one `--out` takes one receiver at a time.
//!
//! Every process binds to 127.0.0.1 and a group in 239.255.0.0/16 (third octet 120 + test,
//! ports 43_000 + 100 x test, see [`common::group`]). Each child is bounded by its own flags
//! and by the test, which waits with a deadline and kills what is left. The disk-full test
//! mounts a size-limited tmpfs (root; skipped with its reason elsewhere, failed under CI).

mod common;

use common::*;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Units of 1400 bytes, 64 per block: blocks of 89,600 bytes, small against the objects, so
/// what is in flight at a kill (a few blocks) is a small share of them.
const UNIT: u64 = 1400;
const UNITS_PER_BLOCK: u64 = 64;
const BLOCK: u64 = UNIT * UNITS_PER_BLOCK;

fn group(test: u8) -> String {
    common::group(120, 43_000, test)
}

/// `blockcast serve` of `paths` on `group` at `rate`, waiting up to 20 s for `min` receivers,
/// with this suite's geometry and `extra` flags.
fn server(
    dir: &Path,
    name: &str,
    group: &str,
    paths: &[&Path],
    rate: &str,
    extra: &[&str],
) -> Proc {
    let mut args: Vec<OsString> = vec!["serve".into()];
    args.extend(paths.iter().map(|p| p.as_os_str().to_owned()));
    for a in [
        "--group",
        group,
        "--iface",
        IFACE,
        "--rate",
        rate,
        "--max-wait",
        "20",
        "--deadline",
        "120",
        "--unit-size",
        "1400",
        "--units-per-block",
        "64",
        "--json",
    ] {
        args.push(a.into());
    }
    args.extend(extra.iter().map(OsString::from));
    Proc::spawn(dir, name, args)
}

fn receiver(dir: &Path, name: &str, group: &str, out: &Path, extra: &[&str]) -> Proc {
    let mut args = receive_args(group, out, 30, &["--json"]);
    args.extend(extra.iter().map(OsString::from));
    Proc::spawn(dir, name, args)
}

/// A number in [0, 1) from `seed` (xorshift64*).
fn unit_draw(seed: u64) -> f64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..4 {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
    }
    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

/// Blocks of `got` whose bytes are those of `want` (blocks of [`BLOCK`] bytes).
fn matching_blocks(want: &Path, got: &Path) -> u64 {
    let (mut a, mut b) = (
        File::open(want).expect("source"),
        File::open(got).expect("copy"),
    );
    let (mut x, mut y) = (vec![0u8; BLOCK as usize], vec![0u8; BLOCK as usize]);
    let mut same = 0;
    loop {
        let n = read_full(&mut a, &mut x);
        if n == 0 {
            return same;
        }
        let m = read_full(&mut b, &mut y[..n]);
        same += u64::from(m == n && x[..n] == y[..n]);
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut at = 0;
    while at < buf.len() {
        match f.read(&mut buf[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) => panic!("read: {e}"),
        }
    }
    at
}

fn u64_of(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// The seed of the kill-and-resume test: `BLOCKCAST_RESUME_SEED`, or a fixed one (the bench
/// script runs it at many seeds).
fn resume_seed() -> u64 {
    std::env::var("BLOCKCAST_RESUME_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(14)
}

#[test]
fn a_receiver_killed_at_a_random_point_resumes_and_fetches_only_what_it_did_not_hold() {
    let seed = resume_seed();
    let dir = Scratch::new("kill");
    let g = group(1);
    let size: u64 = 48 << 20;
    let src = dir.path("image.bin");
    write_sample(&src, size, seed);
    let out = dir.path("copy.bin");
    // Killed between a fifth and four fifths of the first pass, where the seed says.
    let at = 0.2 + 0.6 * unit_draw(seed);
    let kill_at = ((size as f64 * at) as u64).min(size - 4096);
    // 48 MiB at 16 MB/s: the first pass takes 3 s; the dead receiver is dropped after 2 s.
    let mut s = server(
        &dir.0,
        "server",
        &g,
        &[&src],
        "16M",
        &["--min-receivers", "1", "--receiver-timeout", "2"],
    );
    let mut first = receiver(&dir.0, "first", &g, &out, &[]);
    wait_until(
        Duration::from_secs(60),
        "the first pass to reach the kill point",
        || {
            first.assert_running();
            s.assert_running();
            has_data_at(&out, kill_at)
        },
    );
    first.kill();
    // What the killed receiver had whole: every block of its file that is the source's (its
    // verified blocks, and any written whole but not yet verified when it died).
    let held = matching_blocks(&src, &out);
    let mut second = receiver(&dir.0, "second", &g, &out, &[]);
    second.expect_code(Duration::from_secs(60), 0);
    s.expect_code(Duration::from_secs(60), 0);
    assert_identical(&src, &out);
    let v = second.json();
    let (reused, received) = (u64_of(&v, "reused_bytes"), u64_of(&v, "received_bytes"));
    assert_eq!(
        reused + received,
        size,
        "every byte was reused or received: {v}"
    );
    assert!(reused > 0, "nothing was reused: {v}");
    // Fetched again although it was whole in the file at the kill.
    let held_bytes = held * BLOCK;
    let refetched = held_bytes.saturating_sub(reused);
    let share = refetched as f64 / size as f64;
    eprintln!(
        "resume seed {seed}: killed at {:.1} %, {held} blocks held ({held_bytes} bytes), reused {reused}, received {received}, re-fetched {refetched} bytes = {:.3} % of the object",
        at * 100.0,
        share * 100.0
    );
    assert!(
        share < 0.01,
        "re-fetched {refetched} bytes ({:.2} %) of what was whole at the kill: {v}",
        share * 100.0
    );
}

#[test]
fn receivers_follow_a_restarted_server_and_it_skips_what_they_hold() {
    let dir = Scratch::new("restart");
    let g = group(2);
    let size: u64 = (40 << 20) + 777;
    let src = dir.path("image.bin");
    write_sample(&src, size, 2);
    let outs: Vec<PathBuf> = (0..2).map(|i| dir.path(&format!("copy-{i}.bin"))).collect();
    let mut rs: Vec<Proc> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| receiver(&dir.0, &format!("receiver-{i}"), &g, o, &[]))
        .collect();
    let opts = ["--min-receivers", "2"];
    let mut first = server(&dir.0, "first-server", &g, &[&src], "16M", &opts);
    wait_until(
        Duration::from_secs(60),
        "the first pass to reach a third of the file",
        || {
            first.assert_running();
            outs.iter().all(|o| has_data_at(o, size / 3))
        },
    );
    first.kill();
    // A new server of the same file: a new session, the same manifest.
    let mut second = server(&dir.0, "second-server", &g, &[&src], "16M", &opts);
    second.expect_code(Duration::from_secs(90), 0);
    for r in &mut rs {
        r.expect_code(Duration::from_secs(30), 0);
    }
    for o in &outs {
        assert_identical(&src, o);
    }
    let v = second.json();
    let complete = v["receivers"]
        .as_array()
        .expect("receivers")
        .iter()
        .filter(|r| r["complete"] == true)
        .count();
    assert_eq!(complete, 2, "both receivers followed the new session: {v}");
    // The new server skipped what both held: less than the whole object went out.
    let units = size.div_ceil(UNIT);
    let sent = u64_of(&v, "data_units") + u64_of(&v, "repair_units");
    assert!(
        sent < units,
        "the new server sent {sent} units of {units}: {v}"
    );
    for r in &rs {
        let j = r.json();
        assert_eq!(u64_of(&j, "reused_bytes"), 0, "{j}");
        assert_eq!(u64_of(&j, "received_bytes"), size, "{j}");
    }
}

#[test]
fn a_second_receive_of_a_whole_copy_transfers_nothing() {
    let dir = Scratch::new("whole");
    let g = group(3);
    let tree = dir.path("tree");
    write_sample(&tree.join("a.bin"), (6 << 20) + 5, 31);
    write_sample(&tree.join("sub/b.bin"), 3 * BLOCK, 32);
    let out = dir.path("got");
    let run = |name: &str, extra: &[&str]| {
        let mut r = receiver(&dir.0, &format!("{name}-receiver"), &g, &out, extra);
        let mut s = server(
            &dir.0,
            &format!("{name}-server"),
            &g,
            &[&tree],
            "40M",
            &["--min-receivers", "1"],
        );
        s.expect_code(Duration::from_secs(60), 0);
        r.expect_code(Duration::from_secs(30), 0);
        (s.json(), r.json())
    };
    let (_, first) = run("first", &[]);
    let total = u64_of(&first, "bytes");
    assert_eq!(u64_of(&first, "received_bytes"), total, "{first}");
    // Again, with the state file the first left: known whole at once.
    let (served, again) = run("again", &[]);
    assert_eq!(u64_of(&again, "reused_bytes"), total, "{again}");
    assert_eq!(u64_of(&again, "received_bytes"), 0, "{again}");
    assert_eq!(u64_of(&again, "data_units"), 0, "{again}");
    assert_eq!(u64_of(&served, "data_units"), 0, "{served}");
    assert_eq!(u64_of(&served, "repair_units"), 0, "{served}");
    // Without it (a copy made otherwise: not ours, so only with --overwrite): every block is
    // hashed, and still nothing is sent.
    std::fs::remove_dir_all(out.join(".blockcast")).expect("remove the state");
    let (served, hashed) = run("hashed", &["--overwrite"]);
    assert_eq!(u64_of(&hashed, "reused_bytes"), total, "{hashed}");
    assert_eq!(u64_of(&hashed, "received_bytes"), 0, "{hashed}");
    assert_eq!(u64_of(&served, "data_units"), 0, "{served}");
    for rel in ["a.bin", "sub/b.bin"] {
        assert_identical(&tree.join(rel), &out.join("tree").join(rel));
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A tmpfs mounted by a test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn skip_reason() -> Option<String> {
        (!is_root()).then(|| "mounting a tmpfs needs root".to_string())
    }

    fn mount(at: PathBuf, size: u64) -> Tmpfs {
        std::fs::create_dir_all(&at).expect("mount point");
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "blockcast-test",
            ])
            .arg(&at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs at {}: {st}", at.display());
        Tmpfs(at)
    }

    /// Gives it `size` bytes in all (the space a user frees).
    fn resize(&self, size: u64) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(st.success(), "remount {}: {st}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_receiver_with_its_state_kept_and_a_later_run_resumes() {
    if !can_run(Tmpfs::skip_reason()) {
        return;
    }
    let dir = Scratch::new("full");
    let g = group(4);
    let size: u64 = 24 << 20;
    let src = dir.path("image.bin");
    write_sample(&src, size, 4);
    // Room for about half of it.
    let disk = Tmpfs::mount(dir.path("disk"), 12 << 20);
    let out = disk.0.join("copy.bin");
    // Sparse files: the disk fills up midway (with the default preallocation it would be
    // found full at the start). The dead-receiver timeout is longer than the test waits, so
    // the server ends early only if the receiver says it leaves.
    let mut s = server(
        &dir.0,
        "server",
        &g,
        &[&src],
        "16M",
        &["--min-receivers", "1", "--receiver-timeout", "100"],
    );
    let mut r = receiver(&dir.0, "receiver", &g, &out, &["--no-preallocate"]);
    r.expect_code(Duration::from_secs(60), 4);
    let err = r.stderr();
    assert!(err.contains("No space left"), "stderr: {err}");
    // It left the session: the server, with nobody left, ends without waiting for it.
    s.expect_code(Duration::from_secs(30), 0);
    assert!(
        std::fs::read_dir(disk.0.join(".blockcast"))
            .expect("state directory")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".state")),
        "no state file was kept"
    );
    // With preallocation on the full disk: refused at the start, the copy and state kept.
    let mut s = server(
        &dir.0,
        "server-2",
        &g,
        &[&src],
        "16M",
        &["--min-receivers", "1"],
    );
    let mut refused = receiver(&dir.0, "refused", &g, &out, &[]);
    refused.expect_code(Duration::from_secs(60), 4);
    s.kill();
    // Space freed: the next receive resumes and completes.
    disk.resize(64 << 20);
    let mut s = server(
        &dir.0,
        "server-3",
        &g,
        &[&src],
        "16M",
        &["--min-receivers", "1"],
    );
    let mut resumed = receiver(&dir.0, "resumed", &g, &out, &[]);
    resumed.expect_code(Duration::from_secs(60), 0);
    s.expect_code(Duration::from_secs(60), 0);
    assert_identical(&src, &out);
    let v = resumed.json();
    assert!(u64_of(&v, "reused_bytes") > 0, "nothing was kept: {v}");
    assert_eq!(
        u64_of(&v, "reused_bytes") + u64_of(&v, "received_bytes"),
        size,
        "{v}"
    );
}

#[test]
fn an_input_truncated_while_served_stops_the_server_with_a_clear_error() {
    let dir = Scratch::new("truncated");
    let g = group(5);
    let size: u64 = 32 << 20;
    let src = dir.path("image.bin");
    write_sample(&src, size, 5);
    let out = dir.path("copy.bin");
    let mut r = receiver(&dir.0, "receiver", &g, &out, &[]);
    let mut s = server(
        &dir.0,
        "server",
        &g,
        &[&src],
        "8M",
        &["--min-receivers", "1"],
    );
    wait_until(
        Duration::from_secs(60),
        "the first pass to reach a tenth",
        || {
            s.assert_running();
            has_data_at(&out, size / 10)
        },
    );
    File::options()
        .write(true)
        .open(&src)
        .expect("open the input")
        .set_len(1 << 20)
        .expect("truncate the input");
    let st = s.wait_within(Duration::from_secs(30));
    assert_eq!(
        st.code(),
        Some(3),
        "the server ended with {st} (a signal has no code)\nstderr: {}",
        s.stderr()
    );
    let err = s.stderr();
    assert!(
        err.contains("changed while it was being served") && err.contains("image.bin"),
        "stderr: {err}"
    );
    // The receivers were told: the session ended before everything arrived.
    r.expect_code(Duration::from_secs(30), 6);
}

#[test]
fn a_second_receive_into_the_same_out_is_refused_and_the_first_completes() {
    let dir = Scratch::new("twice");
    let g = group(6);
    let size: u64 = 24 << 20;
    let src = dir.path("image.bin");
    write_sample(&src, size, 6);
    let out = dir.path("copy.bin");
    let mut first = receiver(&dir.0, "first", &g, &out, &[]);
    let mut s = server(
        &dir.0,
        "server",
        &g,
        &[&src],
        "8M",
        &["--min-receivers", "1"],
    );
    wait_until(
        Duration::from_secs(60),
        "the first receiver to be writing",
        || {
            first.assert_running();
            has_data_at(&out, size / 10)
        },
    );
    let mut second = receiver(&dir.0, "second", &g, &out, &[]);
    second.expect_code(Duration::from_secs(30), 7);
    let err = second.stderr();
    assert!(err.contains("in use"), "stderr: {err}");
    assert!(first.exited().is_none(), "the first receiver was disturbed");
    first.expect_code(Duration::from_secs(60), 0);
    s.expect_code(Duration::from_secs(60), 0);
    assert_identical(&src, &out);
}

#[test]
fn a_restarted_relay_resumes_its_cache_and_its_receivers_follow_it() {
    let dir = Scratch::new("relay");
    let up = group(7);
    let down = group(8);
    let size: u64 = (32 << 20) + 1234;
    let src = dir.path("image.bin");
    write_sample(&src, size, 7);
    let cache = dir.path("cache.bin");
    let out = dir.path("copy.bin");
    let relay = |name: &str| {
        let args: Vec<OsString> = [
            "relay",
            "--upstream",
            &up,
            "--iface",
            IFACE,
            "--downstream",
            &down,
            "--cache",
            &cache.to_string_lossy(),
            "--rate",
            "40M",
            "--min-receivers",
            "1",
            "--max-wait",
            "20",
            "--json",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        Proc::spawn(&dir.0, name, args)
    };
    let mut first = relay("first-relay");
    let mut r = receiver(&dir.0, "receiver", &down, &out, &[]);
    let mut s = server(
        &dir.0,
        "server",
        &up,
        &[&src],
        "10M",
        &["--min-receivers", "1", "--receiver-timeout", "2"],
    );
    wait_until(
        Duration::from_secs(60),
        "the receiver to reach a quarter",
        || {
            first.assert_running();
            r.assert_running();
            has_data_at(&out, size / 4)
        },
    );
    first.kill();
    let mut second = relay("second-relay");
    second.expect_code(Duration::from_secs(90), 0);
    r.expect_code(Duration::from_secs(30), 0);
    s.expect_code(Duration::from_secs(60), 0);
    assert_identical(&src, &cache);
    assert_identical(&src, &out);
    let v = second.json();
    assert!(
        u64_of(&v["upstream"], "reused_bytes") > 0,
        "the restarted relay fetched its cache again: {v}"
    );
}

/// An ext2 file system in an image file, mounted through a loop device by a test (ext2 cannot
/// reserve space: `fallocate` fails with EOPNOTSUPP), unmounted when dropped.
struct Ext2(PathBuf);

impl Ext2 {
    fn skip_reason() -> Option<String> {
        if !is_root() {
            return Some("mounting an ext2 image needs root".into());
        }
        if !Path::new("/dev/loop-control").exists() {
            return Some("no loop devices (/dev/loop-control)".into());
        }
        let mkfs = Command::new("mkfs.ext2").arg("-V").output();
        mkfs.is_err()
            .then(|| "mkfs.ext2 is missing (e2fsprogs)".into())
    }

    fn mount(image: &Path, at: PathBuf, size: u64) -> Ext2 {
        File::create(image)
            .and_then(|f| f.set_len(size))
            .expect("image file");
        let st = Command::new("mkfs.ext2")
            .args(["-q", "-F"])
            .arg(image)
            .status()
            .expect("run mkfs.ext2");
        assert!(st.success(), "mkfs.ext2: {st}");
        std::fs::create_dir_all(&at).expect("mount point");
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(&at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount {}: {st}", image.display());
        Ext2(at)
    }
}

impl Drop for Ext2 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_file_system_that_cannot_reserve_space_gets_plain_files() {
    if !can_run(Ext2::skip_reason()) {
        return;
    }
    let dir = Scratch::new("ext2");
    let g = group(9);
    let size: u64 = (16 << 20) + 99;
    let src = dir.path("image.bin");
    write_sample(&src, size, 9);
    let disk = Ext2::mount(&dir.path("ext2.img"), dir.path("disk"), 48 << 20);
    let out = disk.0.join("copy.bin");
    let mut r = receiver(&dir.0, "receiver", &g, &out, &[]);
    let mut s = server(
        &dir.0,
        "server",
        &g,
        &[&src],
        "40M",
        &["--min-receivers", "1"],
    );
    s.expect_code(Duration::from_secs(60), 0);
    r.expect_code(Duration::from_secs(30), 0);
    assert!(
        r.stderr().contains("cannot reserve space"),
        "no word of the fallback: {}",
        r.stderr()
    );
    assert_identical(&src, &out);
}
