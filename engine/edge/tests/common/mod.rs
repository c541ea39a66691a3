//! What the edge's integration tests share: running only where they can.

/// Whether the test can run: `true` when `why_not` is `None`. Otherwise the test prints
/// `skipped: <why>` and the caller returns, or, when `CI` is set (to anything but empty, `0` or
/// `false`, as .ci/run sets it), the test fails here: a skipped test under CI cannot fail.
#[track_caller]
pub fn can_run(why_not: Option<String>) -> bool {
    let Some(reason) = why_not else {
        return true;
    };
    let ci = std::env::var("CI").unwrap_or_default();
    if !matches!(ci.as_str(), "" | "0" | "false") {
        panic!("cannot run under CI={ci}: {reason}");
    }
    eprintln!("skipped: {reason}");
    false
}
