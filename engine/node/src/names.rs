//! Names as shown to people. Object names come from the manifest, a peer's words when no
//! `--trust` pins the session: a name may hold control characters (a newline that forges a
//! log line, a terminal escape). Wherever a name or a path made from one is printed (errors,
//! logs, listings), its control characters are escaped as Rust would (`\n`, `\u{1b}`);
//! JSON output escapes them by itself.

use std::borrow::Cow;
use std::path::Path;

/// `name` with its control characters escaped (unchanged, not copied, when it has none).
pub fn escaped(name: &str) -> Cow<'_, str> {
    if !name.chars().any(char::is_control) {
        return Cow::Borrowed(name);
    }
    let mut s = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if c.is_control() {
            s.extend(c.escape_debug());
        } else {
            s.push(c);
        }
    }
    Cow::Owned(s)
}

/// `path` as text (lossy for bytes that are not UTF-8), its control characters escaped.
pub fn shown(path: &Path) -> String {
    escaped(&path.to_string_lossy()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_nothing_else_is() {
        assert!(matches!(escaped("a/b ü.iso"), Cow::Borrowed("a/b ü.iso")));
        assert_eq!(
            escaped("a\nb\u{1b}[2J\t\u{7f}"),
            "a\\nb\\u{1b}[2J\\t\\u{7f}"
        );
        assert_eq!(shown(Path::new("/out/x\ry")), "/out/x\\ry");
    }
}
