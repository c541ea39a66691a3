//! Shell-style patterns over object names (`/`-separated): what an agent subscribes to.
//!
//! `*` matches any run of characters within one path component, `?` one character other
//! than `/`, `[abc]`, `[a-z]` and `[!a-z]` one character of (or not of) a set, and `**` any
//! run of characters across components (`dir/**` is everything under `dir`, `**/x.iso` an
//! `x.iso` at any depth). Everything else matches itself. A name matches only as a whole.
//! (Written here rather than taken from `globset`, whose current releases need a newer Rust
//! than this workspace's; the language is small and tested below.)

/// One element of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Char(char),
    Any,
    Star,
    /// `**`, and whether it was `**/` (which also matches no directory at all).
    DoubleStar {
        slash: bool,
    },
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A parsed pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
}

impl Pattern {
    /// Parses `text`; fails on an unclosed `[`.
    pub fn new(text: &str) -> Result<Self, String> {
        let chars: Vec<char> = text.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    let slash = chars.get(i + 2) == Some(&'/');
                    tokens.push(Token::DoubleStar { slash });
                    i += if slash { 3 } else { 2 };
                    continue;
                }
                '*' => tokens.push(Token::Star),
                '?' => tokens.push(Token::Any),
                '[' => {
                    let mut j = i + 1;
                    let negated = matches!(chars.get(j), Some('!' | '^'));
                    if negated {
                        j += 1;
                    }
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let Some(&c) = chars.get(j) else {
                            return Err(format!("{text:?}: '[' without its ']'"));
                        };
                        if c == ']' && !first {
                            break;
                        }
                        first = false;
                        if chars.get(j + 1) == Some(&'-')
                            && chars.get(j + 2).is_some_and(|&e| e != ']')
                        {
                            ranges.push((c, chars[j + 2]));
                            j += 3;
                        } else {
                            ranges.push((c, c));
                            j += 1;
                        }
                    }
                    tokens.push(Token::Class { negated, ranges });
                    i = j;
                }
                c => tokens.push(Token::Char(c)),
            }
            i += 1;
        }
        Ok(Pattern {
            text: text.to_owned(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `name` matches as a whole.
    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        // memo[t][n]: tokens from t match name from n (None: not computed yet).
        let mut memo = vec![vec![None; name.len() + 1]; self.tokens.len() + 1];
        self.at(0, 0, &name, &mut memo)
    }

    fn at(&self, t: usize, n: usize, name: &[char], memo: &mut Vec<Vec<Option<bool>>>) -> bool {
        if let Some(v) = memo[t][n] {
            return v;
        }
        let v = match self.tokens.get(t) {
            None => n == name.len(),
            Some(Token::Char(c)) => name.get(n) == Some(c) && self.at(t + 1, n + 1, name, memo),
            Some(Token::Any) => {
                name.get(n).is_some_and(|&c| c != '/') && self.at(t + 1, n + 1, name, memo)
            }
            Some(Token::Class { negated, ranges }) => {
                name.get(n).is_some_and(|&c| {
                    c != '/' && ranges.iter().any(|&(a, b)| a <= c && c <= b) != *negated
                }) && self.at(t + 1, n + 1, name, memo)
            }
            Some(Token::Star) => {
                // Zero or more characters, none a '/'.
                let mut m = n;
                loop {
                    if self.at(t + 1, m, name, memo) {
                        break true;
                    }
                    if m == name.len() || name[m] == '/' {
                        break false;
                    }
                    m += 1;
                }
            }
            Some(Token::DoubleStar { slash }) => {
                // Any run of characters; `**/` matches a run that ends with '/' or none.
                (n..=name.len()).any(|m| {
                    let ok = !*slash || m == n || name[m - 1] == '/';
                    ok && self.at(t + 1, m, name, memo)
                })
            }
        };
        memo[t][n] = Some(v);
        v
    }
}

/// Whether `name` is subscribed to: it matches one of `patterns` (none: everything but the
/// origin's critical renditions, `.critical/...`, which are for edges; a pattern can still
/// name them).
pub fn subscribed(patterns: &[Pattern], name: &str) -> bool {
    if patterns.is_empty() {
        return !name.starts_with(crate::catalog::CRITICAL_PREFIX);
    }
    patterns.iter().any(|p| p.matches(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        Pattern::new(p).unwrap().matches(n)
    }

    #[test]
    fn stars_stay_in_their_component_and_double_stars_cross() {
        assert!(m("*.iso", "a.iso"));
        assert!(!m("*.iso", "dir/a.iso"));
        assert!(m("dir/*.iso", "dir/a.iso"));
        assert!(m("**/*.iso", "a.iso"));
        assert!(m("**/*.iso", "x/y/a.iso"));
        assert!(m("dir/**", "dir/x/y"));
        assert!(!m("dir/**", "other/x"));
        assert!(m("**", "anything/at/all"));
        assert!(m("a*b*c", "aXbYc"));
        assert!(!m("a*b*c", "aXbY"));
        assert!(m("image-?.bin", "image-1.bin"));
        assert!(!m("image-?.bin", "image-10.bin"));
        assert!(m("exact.name", "exact.name"));
        assert!(!m("exact.name", "exact.names"));
    }

    #[test]
    fn classes_ranges_and_negation() {
        assert!(m("v[0-9].iso", "v3.iso"));
        assert!(!m("v[0-9].iso", "vx.iso"));
        assert!(m("v[!0-9].iso", "vx.iso"));
        assert!(m("[]a]", "]"));
        assert!(m("x[-a]", "x-"));
        assert!(Pattern::new("bad[").is_err());
        assert!(subscribed(&[], "anything"));
        // The origin's critical renditions only when a pattern names them.
        assert!(!subscribed(&[], ".critical/00ff"));
        assert!(subscribed(
            &[Pattern::new(".critical/*").unwrap()],
            ".critical/00ff"
        ));
        let p = [
            Pattern::new("*.iso").unwrap(),
            Pattern::new("models/**").unwrap(),
        ];
        assert!(subscribed(&p, "models/llm/weights.bin"));
        assert!(!subscribed(&p, "notes.txt"));
    }

    #[test]
    fn long_names_do_not_take_exponential_time() {
        let name = "a".repeat(200) + "b";
        assert!(!m("*a*a*a*a*a*a*a*a*c", &name));
        assert!(!m("**a**a**a**a**a**c", &name));
    }
}
