//! Safe storing: a receive writes only beneath its `--out`, never through a symbolic link
//! planted there, and never over a file that is not its own partial without `--overwrite`.
//!
//! Every process binds to 127.0.0.1 and a group in 239.255.0.0/16 (third octet 140 + test,
//! ports 36_000 + 100 x test, see [`common::group`]). Each child is bounded by its own flags
//! (`--timeout`, `--max-wait`, `--deadline`) and by the test, which waits with a deadline and
//! kills what is left.

mod common;

use common::*;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

const OBJECT: u64 = (2 << 20) + 77;

fn group(test: u8) -> String {
    common::group(140, 36_000, test)
}

/// `blockcast serve` of `path` on `group`, waiting up to 20 s for one receiver.
fn server(dir: &Path, name: &str, group: &str, path: &Path) -> Proc {
    let mut args: Vec<OsString> = vec!["serve".into(), path.into()];
    for a in [
        "--group",
        group,
        "--iface",
        IFACE,
        "--rate",
        "40M",
        "--min-receivers",
        "1",
        "--max-wait",
        "20",
        "--deadline",
        "60",
        "--json",
    ] {
        args.push(a.into());
    }
    Proc::spawn(dir, name, args)
}

/// One receive of `source` into `out` (with `extra` flags): its exit code and stderr. The
/// server is stopped once the receiver is done (it would wait for a receiver that left).
fn receive(
    dir: &Path,
    test: u8,
    run: &str,
    source: &Path,
    out: &Path,
    extra: &[&str],
) -> (i32, String) {
    let g = group(test);
    let mut args = receive_args(&g, out, 30, &["--json"]);
    args.extend(extra.iter().map(OsString::from));
    let mut r = Proc::spawn(dir, &format!("{run}-receiver"), args);
    let mut s = server(dir, &format!("{run}-server"), &g, source);
    let code = r.wait_within(Duration::from_secs(60)).code().unwrap_or(-1);
    if code == 0 {
        s.expect_code(Duration::from_secs(30), 0);
    } else {
        s.kill();
    }
    (code, r.stderr())
}

#[test]
fn a_symbolic_link_planted_under_out_is_not_followed() {
    let dir = Scratch::new("links");
    let tree = dir.path("tree");
    write_sample(&tree.join("a.bin"), OBJECT, 5);
    let (out, outside) = (dir.path("got"), dir.path("outside"));
    std::fs::create_dir_all(&out).expect("out");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("a.bin"), b"not yours").expect("victim");
    // The object's directory is a link out of --out: refused, exit 4, nothing written there.
    std::os::unix::fs::symlink(&outside, out.join("tree")).expect("dir link");
    let (code, err) = receive(&dir.0, 1, "dir-link", &tree, &out, &[]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not followed"), "{err}");
    assert_eq!(
        std::fs::read(outside.join("a.bin")).expect("victim"),
        b"not yours"
    );
    assert_eq!(std::fs::read_dir(&outside).expect("outside").count(), 1);
    // The object itself is a link to a file outside: someone else's (exit 8), and with
    // --overwrite the link is replaced by the object, the file it named untouched.
    std::fs::remove_file(out.join("tree")).expect("remove the dir link");
    std::fs::create_dir_all(out.join("tree")).expect("tree");
    std::os::unix::fs::symlink(outside.join("a.bin"), out.join("tree/a.bin")).expect("link");
    let (code, err) = receive(&dir.0, 2, "file-link", &tree, &out, &[]);
    assert_eq!(code, 8, "{err}");
    let (code, err) = receive(
        &dir.0,
        3,
        "file-link-overwrite",
        &tree,
        &out,
        &["--overwrite"],
    );
    assert_eq!(code, 0, "{err}");
    let got = out.join("tree/a.bin");
    assert!(!got
        .symlink_metadata()
        .expect("got")
        .file_type()
        .is_symlink());
    assert_identical(&tree.join("a.bin"), &got);
    assert_eq!(
        std::fs::read(outside.join("a.bin")).expect("victim"),
        b"not yours"
    );
}

#[test]
fn a_foreign_file_is_kept_without_overwrite_and_replaced_with_it() {
    let dir = Scratch::new("foreign");
    let source = dir.path("image.bin");
    write_sample(&source, OBJECT, 7);
    let out = dir.path("got.bin");
    write_sample(&out, OBJECT, 8);
    let before = hash_file(&out);
    let (code, err) = receive(&dir.0, 4, "kept", &source, &out, &[]);
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("not overwritten"), "{err}");
    assert_eq!(hash_file(&out), before, "the foreign file was changed");
    let (code, err) = receive(&dir.0, 5, "replaced", &source, &out, &["--overwrite"]);
    assert_eq!(code, 0, "{err}");
    assert_identical(&source, &out);
    // Now it is ours (a state file names it): a receive again needs no --overwrite.
    let (code, err) = receive(&dir.0, 6, "again", &source, &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert_identical(&source, &out);
}
