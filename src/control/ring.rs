//! Recent output per program, for `brood ctl logs`: a ring bounded in
//! lines and bytes, with sequence numbers so followers can resume.

use std::collections::VecDeque;

const MAX_LINES: usize = 1000;
const MAX_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub struct LogLine {
    pub seq: u64,
    pub label: String,
    pub stderr: bool,
    pub text: String,
}

#[derive(Default)]
pub struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
    next_seq: u64,
}

impl Ring {
    pub fn push(&mut self, label: &str, stderr: bool, line: &[u8]) {
        let text = String::from_utf8_lossy(line).into_owned();
        self.bytes += text.len();
        self.lines.push_back(LogLine {
            seq: self.next_seq,
            label: label.to_string(),
            stderr,
            text,
        });
        self.next_seq += 1;
        while self.lines.len() > MAX_LINES || self.bytes > MAX_BYTES {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.text.len(),
                None => break,
            }
        }
    }

    /// The sequence number the next line will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Lines with `seq >= from` that `keep` accepts.
    pub fn since<'a>(
        &'a self,
        from: u64,
        keep: impl Fn(&LogLine) -> bool + 'a,
    ) -> impl Iterator<Item = &'a LogLine> + 'a {
        self.lines.iter().filter(move |l| l.seq >= from && keep(l))
    }

    /// The last `n` lines that `keep` accepts, oldest first.
    pub fn last(&self, n: usize, keep: impl Fn(&LogLine) -> bool) -> Vec<&LogLine> {
        let mut out: Vec<&LogLine> = self.lines.iter().rev().filter(|l| keep(l)).take(n).collect();
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_lines_within_bounds() {
        let mut r = Ring::default();
        for i in 0..1500 {
            r.push("w.1", false, format!("line {i}").as_bytes());
        }
        let last = r.last(2, |_| true);
        assert_eq!(
            last.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["line 1498", "line 1499"]
        );
        assert_eq!(r.since(0, |_| true).count(), MAX_LINES);
        assert_eq!(r.next_seq(), 1500);
    }

    #[test]
    fn bytes_are_bounded_too() {
        let mut r = Ring::default();
        let big = vec![b'x'; 64 * 1024];
        for _ in 0..100 {
            r.push("w.1", false, &big);
        }
        assert!(r.bytes <= MAX_BYTES);
    }
}
