//! Recent output per program, for `brood ctl logs`: a ring bounded in
//! lines and bytes, with sequence numbers so followers can resume.

use std::collections::{HashMap, VecDeque};

pub const MAX_LINES: usize = 1000;
pub const MAX_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub struct LogLine {
    pub seq: u64,
    pub label: String,
    pub stderr: bool,
    pub text: String,
}

/// One line in the ring: its text is the next `len` bytes of `Ring::text`.
#[derive(Clone, Copy)]
struct Entry {
    seq: u64,
    label: u32,
    stderr: bool,
    len: u32,
}

/// The lines' bytes sit end to end in one buffer and labels are numbered
/// once: a push is a copy and a small entry, with no allocation and no
/// UTF-8 check (done when lines are read, which is rare). A flood of
/// output pushes every line, and this was most of run mode's cost per line.
#[derive(Default)]
pub struct Ring {
    entries: VecDeque<Entry>,
    text: VecDeque<u8>,
    labels: Vec<String>,
    label_ids: HashMap<String, u32>,
    /// The label of the last push: most pushes repeat it.
    last_label: Option<u32>,
    next_seq: u64,
}

impl Ring {
    pub fn push(&mut self, label: &str, stderr: bool, line: &[u8]) {
        let label = self.label_id(label);
        self.entries.push_back(Entry {
            seq: self.next_seq,
            label,
            stderr,
            len: line.len() as u32,
        });
        self.text.extend(line);
        self.next_seq += 1;
        while self.entries.len() > MAX_LINES || self.text.len() > MAX_BYTES {
            match self.entries.pop_front() {
                Some(old) => {
                    self.text.drain(..old.len as usize);
                }
                None => break,
            }
        }
    }

    fn label_id(&mut self, label: &str) -> u32 {
        if let Some(id) = self.last_label.filter(|id| self.labels[*id as usize] == label) {
            return id;
        }
        let id = match self.label_ids.get(label) {
            Some(id) => *id,
            None => {
                let id = self.labels.len() as u32;
                self.labels.push(label.to_string());
                self.label_ids.insert(label.to_string(), id);
                id
            }
        };
        self.last_label = Some(id);
        id
    }

    /// The sequence number the next line will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The line of entry `e`, whose text starts at `start` in `text`.
    fn line(&self, e: &Entry, start: usize) -> LogLine {
        let bytes: Vec<u8> = self.text.range(start..start + e.len as usize).copied().collect();
        LogLine {
            seq: e.seq,
            label: self.labels[e.label as usize].clone(),
            stderr: e.stderr,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// The sequence number of the oldest line kept (the next one's when
    /// there is none): a reader whose cursor is below it missed lines.
    pub fn first_seq(&self) -> u64 {
        self.entries.front().map_or(self.next_seq, |e| e.seq)
    }

    /// Lines with `seq >= from` that `keep` accepts.
    pub fn since<'a>(
        &'a self,
        from: u64,
        keep: impl Fn(&LogLine) -> bool + 'a,
    ) -> impl Iterator<Item = LogLine> + 'a {
        let mut start = 0;
        self.entries
            .iter()
            .filter_map(move |e| {
                let at = start;
                start += e.len as usize;
                (e.seq >= from).then(|| self.line(e, at))
            })
            .filter(move |l| keep(l))
    }

    /// The last `n` lines that `keep` accepts, oldest first.
    pub fn last(&self, n: usize, keep: impl Fn(&LogLine) -> bool) -> Vec<LogLine> {
        let mut end = self.text.len();
        let mut out = Vec::new();
        for e in self.entries.iter().rev() {
            if out.len() == n {
                break;
            }
            end -= e.len as usize;
            let line = self.line(e, end);
            if keep(&line) {
                out.push(line);
            }
        }
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
        assert_eq!(
            r.since(1490, |_| true).map(|l| l.seq).collect::<Vec<_>>(),
            (1490..1500).collect::<Vec<_>>()
        );
    }

    #[test]
    fn labels_streams_and_bytes_come_back_as_pushed() {
        let mut r = Ring::default();
        r.push("a.1", false, b"one");
        r.push("b.1", true, b"two \xff");
        r.push("a.1", false, b"");
        let got: Vec<(String, bool, String)> = r
            .since(0, |_| true)
            .map(|l| (l.label, l.stderr, l.text))
            .collect();
        assert_eq!(
            got,
            [
                ("a.1".to_string(), false, "one".to_string()),
                ("b.1".to_string(), true, "two \u{fffd}".to_string()),
                ("a.1".to_string(), false, String::new()),
            ]
        );
        assert_eq!(r.last(5, |l| l.label == "b.1").len(), 1);
    }

    #[test]
    fn bytes_are_bounded_too() {
        let mut r = Ring::default();
        let big = vec![b'x'; 64 * 1024];
        for _ in 0..100 {
            r.push("w.1", false, &big);
        }
        assert!(r.text.len() <= MAX_BYTES);
    }
}
