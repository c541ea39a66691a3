//! End-to-end tests of the real `blockcast` binary on loopback multicast, with real io_uring.
//!
//! Every process binds to 127.0.0.1 and a group in 239.255.0.0/16 (never another interface);
//! each test has its own group and port, so tests run in parallel without hearing each other.
//! Every child is bounded twice: by its own flags (`--timeout`, `--max-wait`, `--deadline`)
//! and by the test, which waits with a deadline and kills what is left (see [`Proc`]).
//! Receivers ask for a 4 MiB socket buffer, the most a default `net.core.rmem_max` grants, so
//! the tests behave the same on machines where that cap applies.

mod common;

use common::*;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bytes per block with the CLI's default geometry (1400-byte units, 749 per block).
const BLOCK: u64 = 1400 * 749;

/// Group and port for test number `test`: third octet 200 + test (play.rs uses 160 + test),
/// port 40_000 + 100 * test (see [`common::group`]).
fn group(test: u8) -> String {
    common::group(200, 40_000, test)
}

fn receiver(dir: &Path, name: &str, group: &str, out: &Path, timeout_s: u32) -> Proc {
    receiver_with(dir, name, group, out, timeout_s, &[])
}

/// [`receiver`] with more arguments.
fn receiver_with(
    dir: &Path,
    name: &str,
    group: &str,
    out: &Path,
    timeout_s: u32,
    extra: &[&str],
) -> Proc {
    let mut args = receive_args(group, out, timeout_s, &["--json"]);
    args.extend(extra.iter().map(OsString::from));
    Proc::spawn(dir, name, args)
}

struct ServeOpts<'a> {
    rate: &'a str,
    min_receivers: usize,
    max_wait_s: u32,
    deadline_s: u32,
}

fn server(dir: &Path, group: &str, paths: &[&Path], o: &ServeOpts) -> Proc {
    server_with(dir, group, paths, o, &[])
}

/// [`server`] with more arguments.
fn server_with(dir: &Path, group: &str, paths: &[&Path], o: &ServeOpts, extra: &[&str]) -> Proc {
    let mut args: Vec<OsString> = vec!["serve".into()];
    args.extend(paths.iter().map(|p| p.as_os_str().to_owned()));
    for (flag, value) in [
        ("--group", group.to_string()),
        ("--iface", IFACE.to_string()),
        ("--rate", o.rate.to_string()),
        ("--min-receivers", o.min_receivers.to_string()),
        ("--max-wait", o.max_wait_s.to_string()),
        ("--deadline", o.deadline_s.to_string()),
    ] {
        args.push(flag.into());
        args.push(value.into());
    }
    args.push("--json".into());
    args.extend(extra.iter().map(OsString::from));
    Proc::spawn(dir, "server", args)
}

/// Asserts the server's summary says complete, with `complete` receivers done.
fn assert_served(server: &Proc, complete: usize) -> serde_json::Value {
    let v = server.json();
    eprintln!("server summary: {v}");
    assert_eq!(v["result"], "complete", "server summary: {v}");
    let done = v["receivers"]
        .as_array()
        .expect("receivers array")
        .iter()
        .filter(|r| r["complete"] == true)
        .count();
    assert_eq!(done, complete, "server summary: {v}");
    v
}

#[test]
fn one_receiver_gets_a_256_mib_file() {
    let dir = Scratch::new("one");
    let g = group(1);
    let src = dir.path("big.bin");
    write_sample(&src, 256 << 20, 1);
    let out = dir.path("copy.bin");
    let mut r = receiver(&dir.0, "receiver", &g, &out, 30);
    let opts = ServeOpts {
        rate: "200M",
        min_receivers: 1,
        max_wait_s: 20,
        deadline_s: 120,
    };
    let mut s = server(&dir.0, &g, &[&src], &opts);
    s.expect_code(Duration::from_secs(150), 0);
    r.expect_code(Duration::from_secs(30), 0);
    assert_served(&s, 1);
    let rj = r.json();
    assert_eq!(rj["bytes"], 256u64 << 20, "receiver summary: {rj}");
    assert_eq!(rj["blocks_failed"], 0, "receiver summary: {rj}");
    assert_identical(&src, &out);
}

#[test]
fn four_receivers_get_identical_copies() {
    let dir = Scratch::new("four");
    let g = group(2);
    let src = dir.path("sample.bin");
    // Not a whole number of blocks or units: the last block and unit are short.
    write_sample(&src, (64 << 20) + 12_345, 2);
    // Two receivers write to a file path, two into existing directories (out/sample.bin).
    let mut outs = Vec::new();
    let mut rs = Vec::new();
    for i in 0..4 {
        let (arg, stored) = if i % 2 == 0 {
            let p = dir.path(&format!("copy-{i}.bin"));
            (p.clone(), p)
        } else {
            let d = dir.path(&format!("into-{i}"));
            std::fs::create_dir(&d).expect("out dir");
            (d.clone(), d.join("sample.bin"))
        };
        rs.push(receiver(&dir.0, &format!("receiver-{i}"), &g, &arg, 30));
        outs.push(stored);
    }
    let opts = ServeOpts {
        rate: "100M",
        min_receivers: 4,
        max_wait_s: 20,
        deadline_s: 120,
    };
    let mut s = server(&dir.0, &g, &[&src], &opts);
    s.expect_code(Duration::from_secs(150), 0);
    for r in &mut rs {
        r.expect_code(Duration::from_secs(30), 0);
    }
    assert_served(&s, 4);
    for o in &outs {
        assert_identical(&src, o);
    }
}

/// A server with two data threads sends stripe 1 to the group's port + 1: a receiver reading
/// it on a thread of its own and one reading both sockets on its receive thread both get
/// identical copies, and both read datagrams on the second socket (a receiver that missed the
/// stripe would report none there, and a server sending every stripe to one port likewise).
#[test]
fn a_striped_server_reaches_receivers_with_one_and_two_threads() {
    let dir = Scratch::new("striped");
    let g = group(12);
    let src = dir.path("striped.bin");
    write_sample(&src, (48 << 20) + 777, 12);
    let mut rs = Vec::new();
    let mut outs = Vec::new();
    for threads in ["1", "2"] {
        let out = dir.path(&format!("copy-{threads}.bin"));
        let name = format!("receiver-{threads}");
        rs.push(receiver_with(
            &dir.0,
            &name,
            &g,
            &out,
            30,
            &["--threads", threads],
        ));
        outs.push(out);
    }
    let opts = ServeOpts {
        rate: "100M",
        min_receivers: 2,
        max_wait_s: 20,
        deadline_s: 120,
    };
    let mut s = server_with(&dir.0, &g, &[&src], &opts, &["--threads", "2"]);
    s.expect_code(Duration::from_secs(150), 0);
    for r in &mut rs {
        r.expect_code(Duration::from_secs(30), 0);
    }
    assert_served(&s, 2);
    for (r, o) in rs.iter().zip(&outs) {
        let v = r.json();
        assert!(
            v["stripe_datagrams"].as_u64().unwrap_or(0) > 0,
            "nothing read on stripe 1's port: {v}"
        );
        assert_identical(&src, o);
    }
}

#[test]
fn a_directory_arrives_whole() {
    let dir = Scratch::new("tree");
    let g = group(3);
    let tree = dir.path("tree");
    // Files: odd sizes, exactly one block, one byte, and an empty one, nested two deep.
    let files: [(&str, u64); 5] = [
        ("a.bin", (3 << 20) + 777),
        ("sub/b.bin", BLOCK),
        ("sub/one", 1),
        ("sub/deeper/c.bin", 2 * BLOCK + 1400 * 3 + 2),
        ("sub/deeper/empty", 0),
    ];
    for (i, (rel, size)) in files.iter().enumerate() {
        write_sample(&tree.join(rel), *size, 10 + i as u64);
    }
    // One receiver stores into an existing directory, the other into one it must create.
    let existing = dir.path("got-a");
    std::fs::create_dir(&existing).expect("out dir");
    let fresh = dir.path("got-b");
    let mut ra = receiver(&dir.0, "receiver-a", &g, &existing, 30);
    let mut rb = receiver(&dir.0, "receiver-b", &g, &fresh, 30);
    let opts = ServeOpts {
        rate: "100M",
        min_receivers: 2,
        max_wait_s: 20,
        deadline_s: 60,
    };
    let mut s = server(&dir.0, &g, &[&tree], &opts);
    s.expect_code(Duration::from_secs(90), 0);
    ra.expect_code(Duration::from_secs(30), 0);
    rb.expect_code(Duration::from_secs(30), 0);
    let v = assert_served(&s, 2);
    assert_eq!(v["objects"], files.len(), "server summary: {v}");
    for out in [&existing, &fresh] {
        for (rel, _) in &files {
            assert_identical(&tree.join(rel), &out.join("tree").join(rel));
        }
        // Nothing else was written but the receive's state (.blockcast: what is verified,
        // for a later receive into the same place).
        assert!(out.join(".blockcast").is_dir());
        let mut n = 0;
        let mut stack = vec![out.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    if e.file_name() != ".blockcast" {
                        stack.push(e.path());
                    }
                } else {
                    n += 1;
                }
            }
        }
        assert_eq!(n, files.len(), "files under {}", out.display());
    }
}

#[test]
fn a_receiver_started_late_completes() {
    let dir = Scratch::new("late");
    let g = group(4);
    let size: u64 = 128 << 20;
    let src = dir.path("sample.bin");
    write_sample(&src, size, 4);
    let early_out = dir.path("early.bin");
    let late_out = dir.path("late.bin");
    let mut early = receiver(&dir.0, "early", &g, &early_out, 30);
    // 128 MiB at 40 MB/s: the first pass takes over 3 s.
    let opts = ServeOpts {
        rate: "40M",
        min_receivers: 1,
        max_wait_s: 20,
        deadline_s: 120,
    };
    let mut s = server(&dir.0, &g, &[&src], &opts);
    // The late receiver starts once the first pass has reached a fifth of the file.
    wait_until(
        Duration::from_secs(60),
        "the first pass to reach 20% of the file",
        || {
            early.assert_running();
            s.assert_running();
            has_data_at(&early_out, size / 5)
        },
    );
    let mut late = receiver(&dir.0, "late", &g, &late_out, 30);
    s.expect_code(Duration::from_secs(150), 0);
    early.expect_code(Duration::from_secs(30), 0);
    late.expect_code(Duration::from_secs(30), 0);
    let v = assert_served(&s, 2);
    // The late receiver missed the start of the first pass: it was sent again for it.
    let resent = v["repair_units"].as_u64().unwrap() + v["parity_units"].as_u64().unwrap();
    assert!(resent > 0, "nothing was resent for the late receiver: {v}");
    assert_identical(&src, &early_out);
    assert_identical(&src, &late_out);
}

#[test]
fn a_killed_receiver_does_not_stop_the_others() {
    let dir = Scratch::new("killed");
    let g = group(5);
    let size: u64 = 64 << 20;
    let src = dir.path("sample.bin");
    write_sample(&src, size, 5);
    let outs: Vec<PathBuf> = (0..3).map(|i| dir.path(&format!("copy-{i}.bin"))).collect();
    let mut rs: Vec<Proc> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| receiver(&dir.0, &format!("receiver-{i}"), &g, o, 40))
        .collect();
    // 64 MiB at 20 MB/s: the first pass takes over 3 s.
    let opts = ServeOpts {
        rate: "20M",
        min_receivers: 3,
        max_wait_s: 20,
        deadline_s: 120,
    };
    let mut s = server(&dir.0, &g, &[&src], &opts);
    wait_until(
        Duration::from_secs(60),
        "the first pass to reach 10% of the file",
        || {
            rs[0].assert_running();
            s.assert_running();
            has_data_at(&outs[0], size / 10)
        },
    );
    rs[0].kill();
    assert!(
        !has_data_at(&outs[0], size - 4096),
        "receiver 0 had the whole file before it was killed"
    );
    // The server drops the dead receiver once it has not been heard for its receiver timeout
    // (10 s), then finishes with the two that remain.
    s.expect_code(Duration::from_secs(150), 0);
    for r in &mut rs[1..] {
        r.expect_code(Duration::from_secs(40), 0);
    }
    assert_served(&s, 2);
    for o in &outs[1..] {
        assert_identical(&src, o);
    }
}

#[test]
fn a_missing_input_exits_3_naming_it() {
    let dir = Scratch::new("missing");
    let missing = dir.path("no-such-input.bin");
    let opts = ServeOpts {
        rate: "10M",
        min_receivers: 1,
        max_wait_s: 1,
        deadline_s: 2,
    };
    let mut s = server(&dir.0, &group(6), &[&missing], &opts);
    s.expect_code(Duration::from_secs(20), 3);
    let err = s.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "stderr: {err}");
    assert!(
        lines[0].contains(&*missing.to_string_lossy()),
        "stderr: {err}"
    );
    assert!(s.stdout().is_empty(), "stdout: {}", s.stdout());
}

#[test]
fn a_bad_interface_exits_5_listing_the_interfaces() {
    let dir = Scratch::new("badif");
    let src = dir.path("x.bin");
    write_sample(&src, 1000, 7);
    let g = group(7);
    let mut s = Proc::spawn(
        &dir.0,
        "server",
        [
            OsString::from("serve"),
            src.clone().into(),
            "--group".into(),
            g.clone().into(),
            "--iface".into(),
            "nosuchif0".into(),
            "--max-wait".into(),
            "1".into(),
            "--deadline".into(),
            "2".into(),
        ],
    );
    let unused = dir.path("unused");
    let mut r = Proc::spawn(
        &dir.0,
        "receiver",
        [
            OsString::from("receive"),
            "--group".into(),
            g.into(),
            "--iface".into(),
            "nosuchif0".into(),
            "--out".into(),
            unused.clone().into(),
            "--timeout".into(),
            "1".into(),
        ],
    );
    for p in [&mut s, &mut r] {
        p.expect_code(Duration::from_secs(20), 5);
        let err = p.stderr();
        assert!(err.contains("nosuchif0"), "{}: stderr: {err}", p.name);
        assert!(
            err.contains("lo"),
            "{}: stderr does not list lo: {err}",
            p.name
        );
    }
    assert!(!unused.exists());
}

#[test]
fn a_group_that_is_not_multicast_exits_2() {
    let dir = Scratch::new("unicast");
    let src = dir.path("x.bin");
    write_sample(&src, 1000, 8);
    let mut s = Proc::spawn(
        &dir.0,
        "server",
        [
            OsString::from("serve"),
            src.clone().into(),
            "--group".into(),
            "10.1.2.3:9000".into(),
            "--iface".into(),
            IFACE.into(),
            "--max-wait".into(),
            "1".into(),
            "--deadline".into(),
            "2".into(),
        ],
    );
    let unused = dir.path("unused");
    let mut r = Proc::spawn(
        &dir.0,
        "receiver",
        [
            OsString::from("receive"),
            "--group".into(),
            "10.1.2.3:9000".into(),
            "--iface".into(),
            IFACE.into(),
            "--out".into(),
            unused.clone().into(),
            "--timeout".into(),
            "1".into(),
        ],
    );
    for p in [&mut s, &mut r] {
        p.expect_code(Duration::from_secs(20), 2);
        let err = p.stderr();
        assert!(err.contains("10.1.2.3"), "{}: stderr: {err}", p.name);
    }
    assert!(!unused.exists());
}

#[test]
fn a_receiver_with_no_server_exits_6() {
    let dir = Scratch::new("noserver");
    let out = dir.path("never.bin");
    let mut r = receiver(&dir.0, "receiver", &group(9), &out, 1);
    r.expect_code(Duration::from_secs(20), 6);
    assert!(r.stderr().contains("no server"), "stderr: {}", r.stderr());
    assert!(
        !out.exists(),
        "a receiver that heard nothing created {}",
        out.display()
    );
}

#[test]
fn bench_measures_a_verified_local_transfer() {
    let dir = Scratch::new("bench");
    let mut b = Proc::spawn(
        &dir.0,
        "bench",
        [
            "--json",
            "bench",
            "--size",
            "16M",
            "--receivers",
            "2",
            "--rate",
            "100M",
        ],
    );
    b.expect_code(Duration::from_secs(60), 0);
    let v = b.json();
    assert_eq!(v["role"], "bench");
    assert_eq!(v["copies_verified"], 2);
    assert_eq!(v["bytes"], 16 << 20);
    let per = v["gb_per_s_per_receiver"].as_f64().expect("a rate");
    assert!(per > 0.0, "{v}");
    let steal = v["host_steal_pct"].as_f64().expect("the host's steal");
    assert!((0.0..=100.0).contains(&steal), "{v}");
    let p50 = v["block_latency_us"]["p50"].as_u64().expect("a latency");
    let max = v["block_latency_us"]["max"].as_u64().expect("a latency");
    assert!(p50 > 0 && p50 <= max, "{v}");
}

#[test]
fn a_server_nobody_joins_exits_6() {
    let dir = Scratch::new("nobody");
    let src = dir.path("src.bin");
    write_sample(&src, 4 << 20, 31);
    let mut s = server(
        &dir.0,
        &group(11),
        &[&src],
        &ServeOpts {
            rate: "100M",
            min_receivers: 1,
            max_wait_s: 1,
            deadline_s: 30,
        },
    );
    s.expect_code(Duration::from_secs(30), 6);
    assert!(
        s.stderr().contains("no receiver joined"),
        "stderr: {}",
        s.stderr()
    );
}
