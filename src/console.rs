//! The console: commands typed on stdin, one per line.

/// Lines longer than this are not commands; the rest is skipped.
const MAX_COMMAND: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Spawn,
    List,
    Kill(String),
    Restart(String),
    Help,
    Quit,
    /// `R`: re-read the config (run mode).
    Reload,
    /// Anything else, shown back to the user (escaped, shortened).
    Unknown(String),
}

/// Parse one line (without its newline).
pub fn parse(line: &[u8]) -> Command {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    let (verb, arg) = match text.split_once(char::is_whitespace) {
        Some((v, a)) => (v, a.trim()),
        None => (text, ""),
    };
    match (verb, arg.is_empty()) {
        ("" | "s", true) => Command::Spawn,
        ("l", true) => Command::List,
        ("h" | "?", true) => Command::Help,
        ("q", true) => Command::Quit,
        ("R", true) => Command::Reload,
        ("k", false) => Command::Kill(arg.to_string()),
        ("r", false) => Command::Restart(arg.to_string()),
        _ => Command::Unknown(shown(text)),
    }
}

/// How a bad command is echoed: control bytes escaped, at most 60 chars.
fn shown(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == 60 {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits stdin into command lines, bounded in memory whatever arrives.
#[derive(Default)]
pub struct LineReader {
    buf: Vec<u8>,
    overlong: bool,
}

impl LineReader {
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Command>) {
        for chunk in data.split_inclusive(|&b| b == b'\n') {
            let (body, complete) = match chunk.strip_suffix(b"\n") {
                Some(b) => (b, true),
                None => (chunk, false),
            };
            if !self.overlong {
                let room = MAX_COMMAND - self.buf.len();
                if body.len() > room {
                    self.buf.extend_from_slice(&body[..room]);
                    self.overlong = true;
                } else {
                    self.buf.extend_from_slice(body);
                }
            }
            if complete {
                let body = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
                out.push(if self.overlong {
                    Command::Unknown(shown(&String::from_utf8_lossy(&body[..64.min(body.len())])))
                } else {
                    parse(body)
                });
                self.buf.clear();
                self.overlong = false;
            }
        }
    }

    /// At end of input: a last line without a newline still counts.
    pub fn finish(&mut self, out: &mut Vec<Command>) {
        if !self.buf.is_empty() || self.overlong {
            self.feed(b"\n", out);
        }
    }
}

pub const HELP: &str = "\
commands:
  <enter> or s   spawn one more child (spawn mode)
  l              list children
  k LABEL|PID    stop a child (it stays down until r)
  r LABEL|NAME   restart (run mode)
  R              reload the config: changed programs restart (run mode)
  h or ?         this help
  q              shut down gracefully (so does end of input)
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(parse(b""), Command::Spawn);
        assert_eq!(parse(b"  s "), Command::Spawn);
        assert_eq!(parse(b"l"), Command::List);
        assert_eq!(parse(b"k hello.2"), Command::Kill("hello.2".into()));
        assert_eq!(parse(b"r web"), Command::Restart("web".into()));
        assert_eq!(parse(b"?"), Command::Help);
        assert_eq!(parse(b"q"), Command::Quit);
        assert_eq!(parse(b"x"), Command::Unknown("x".into()));
        assert_eq!(parse(b"k"), Command::Unknown("k".into()));
        assert_eq!(parse(b"q now"), Command::Unknown("q now".into()));
    }

    #[test]
    fn junk_is_escaped() {
        assert_eq!(
            parse(b"\x00\xff\x1b"),
            Command::Unknown("\\u{0}\u{fffd}\\u{1b}".into())
        );
    }

    #[test]
    fn reader_bounds_long_lines_and_splits_many() {
        let mut r = LineReader::default();
        let mut out = Vec::new();
        r.feed(&vec![b'a'; 1 << 20], &mut out);
        assert!(out.is_empty());
        r.feed(b"\nq\r\nl\nx", &mut out);
        r.finish(&mut out);
        assert_eq!(out.len(), 4);
        assert!(matches!(&out[0], Command::Unknown(s) if s.len() < 80));
        assert_eq!(
            out[1..],
            [Command::Quit, Command::List, Command::Unknown("x".into())]
        );
        assert!(r.buf.capacity() <= MAX_COMMAND * 2);
    }
}
