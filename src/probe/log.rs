//! `ready = { log = "REGEX" }`: a line of the instance's output matches.
//!
//! The pattern is compiled once, when the config is loaded, so a bad one is
//! a config error and the loop only ever matches. Lines are raw bytes (a
//! program's output need not be UTF-8); `regex::bytes` matches them as
//! they are.

use regex::bytes::{Regex, RegexBuilder};

/// The most memory a compiled pattern may take: a pattern that needs more
/// is a config error, not a slow start.
const SIZE_LIMIT: usize = 1 << 20;

/// A compiled readiness pattern.
#[derive(Clone, Debug)]
pub struct LineMatcher {
    regex: Regex,
}

impl LineMatcher {
    /// Compile `pattern`; the error is one line (the regex crate's own
    /// message spans several, with a caret under the column).
    pub fn new(pattern: &str) -> Result<LineMatcher, String> {
        RegexBuilder::new(pattern)
            .size_limit(SIZE_LIMIT)
            .build()
            .map(|regex| LineMatcher { regex })
            .map_err(|e| match e {
                regex::Error::Syntax(text) => {
                    let why = text
                        .lines()
                        .find_map(|l| l.strip_prefix("error: "))
                        .unwrap_or("syntax error");
                    format!("invalid regex: {why}")
                }
                regex::Error::CompiledTooBig(_) => {
                    format!("regex too large (compiled, more than {} KiB)", SIZE_LIMIT / 1024)
                }
                _ => "invalid regex".to_string(),
            })
    }

    /// Whether one line of output matches. A trailing `\n` or `\r\n` is
    /// not part of the line, so `$` means its end either way.
    pub fn is_match(&self, line: &[u8]) -> bool {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.regex.is_match(line)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        self.regex.as_str()
    }
}

/// Two matchers are the same when their patterns are (a reload compares
/// configs).
impl PartialEq for LineMatcher {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for LineMatcher {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_line_anywhere_unless_anchored() {
        let m = LineMatcher::new("listening on port [0-9]+").unwrap();
        assert!(m.is_match(b"2026-12-03 web: listening on port 8000\n"));
        assert!(!m.is_match(b"listening on port\n"));
        let anchored = LineMatcher::new("^ready$").unwrap();
        assert!(anchored.is_match(b"ready\r\n"));
        assert!(anchored.is_match(b"ready"));
        assert!(!anchored.is_match(b"not ready\n"));
    }

    #[test]
    fn lines_need_not_be_utf8() {
        let m = LineMatcher::new("up").unwrap();
        assert!(m.is_match(b"\xff\xfe up \xc0\n"));
    }

    #[test]
    fn a_bad_pattern_is_one_line() {
        let e = LineMatcher::new("(unclosed").unwrap_err();
        assert_eq!(e, "invalid regex: unclosed group");
        let e = LineMatcher::new("a{99999}{99999}").unwrap_err();
        assert!(!e.contains('\n'), "{e}");
        assert!(
            e.starts_with("regex too large") || e.starts_with("invalid regex"),
            "{e}"
        );
    }

    #[test]
    fn equal_patterns_are_equal() {
        assert_eq!(LineMatcher::new("a+").unwrap(), LineMatcher::new("a+").unwrap());
        assert_ne!(LineMatcher::new("a+").unwrap(), LineMatcher::new("a*").unwrap());
    }
}
