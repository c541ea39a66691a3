//! The test harness's own rules (common/mod.rs): a test that cannot run here (not root, a
//! tool missing) is skipped with its reason, except under CI, where it fails.

mod common;

use common::{cannot_run, CannotRun};

#[test]
fn a_test_that_cannot_run_is_skipped_off_ci() {
    for ci in [
        None,
        Some(""),
        Some("0"),
        Some("false"),
        Some("FALSE"),
        Some(" "),
    ] {
        assert_eq!(
            cannot_run(ci, "needs root"),
            CannotRun::Skip("skipped: needs root".into()),
            "CI={ci:?}"
        );
    }
}

#[test]
fn a_test_that_cannot_run_fails_under_ci() {
    for ci in ["true", "1", "yes", "TRUE"] {
        match cannot_run(Some(ci), "ffmpeg is not on PATH") {
            CannotRun::Fail(m) => assert!(m.contains("ffmpeg is not on PATH"), "CI={ci}: {m}"),
            skip => panic!("CI={ci}: {skip:?}"),
        }
    }
}
