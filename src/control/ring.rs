//! Recent output per program, for `brood ctl logs`: a ring bounded in
//! lines and bytes, with sequence numbers so followers can resume.
//!
//! Lines are kept as blocks: consecutive lines of one instance and stream
//! that arrived in one read, newline-terminated and end to end in one byte
//! buffer, described by one small entry. A read of 64 KiB of short lines is
//! one copy and one entry, not one per line (run mode's cost per line was
//! mostly this ring). Lines never contain a newline (the framer cuts at
//! them), so a block splits back into its lines when it is read, which is
//! rare.
//!
//! A large block is not even copied: the read buffer that holds it is
//! handed to the ring whole ([`Ring::push_chunk`]) and the reader goes on
//! with a buffer the ring gives back (one whose block has left the ring).
//! Copying each read cost brood as much CPU as writing it out did.

use std::collections::{HashMap, VecDeque};

use memchr::memchr_iter;

pub const MAX_LINES: usize = 1000;
pub const MAX_BYTES: usize = 1024 * 1024;
/// Blocks at least this large are kept in their read buffer rather than
/// copied (each such buffer counts whole against `MAX_BYTES`, so small
/// blocks, which would waste most of one, are copied).
pub const CHUNK_MIN: usize = 16 * 1024;

#[derive(Clone, Debug)]
pub struct LogLine {
    pub seq: u64,
    pub label: String,
    pub stderr: bool,
    pub text: String,
}

/// A block of `lines` lines whose text (each line followed by a newline)
/// is `len` bytes: the next ones of `Ring::text`, or with `chunk` those
/// from `start` in the next of `Ring::chunks`. Its first line is `seq`.
#[derive(Clone, Copy)]
struct Entry {
    seq: u64,
    lines: u32,
    len: u32,
    label: u32,
    stderr: bool,
    chunk: bool,
    start: u32,
}

#[derive(Default)]
pub struct Ring {
    entries: VecDeque<Entry>,
    text: VecDeque<u8>,
    /// Read buffers holding blocks, in the order of their entries.
    chunks: VecDeque<Vec<u8>>,
    /// Their capacity, counted against `MAX_BYTES`.
    chunk_bytes: usize,
    /// A buffer whose block has left, for the reader to read into next.
    spare: Option<Vec<u8>>,
    /// Lines held, over all entries.
    lines: usize,
    labels: Vec<String>,
    label_ids: HashMap<String, u32>,
    /// The label of the last push: most pushes repeat it.
    last_label: Option<u32>,
    next_seq: u64,
}

impl Ring {
    /// One line (without its newline).
    pub fn push(&mut self, label: &str, stderr: bool, line: &[u8]) {
        self.append(label, stderr, &[line, b"\n"], 1);
    }

    /// Lines that follow one another: `block` is `lines` lines, each ended
    /// by a newline, and no other newline.
    pub fn push_block(&mut self, label: &str, stderr: bool, block: &[u8], lines: u32) {
        debug_assert_eq!(memchr_iter(b'\n', block).count(), lines as usize);
        debug_assert_eq!(block.last(), Some(&b'\n'));
        self.append(label, stderr, &[block], lines);
    }

    /// A buffer of `len` bytes to read into: one whose block has left
    /// the ring, or a new one.
    pub fn take_spare(&mut self, len: usize) -> Vec<u8> {
        match self.spare.take() {
            Some(b) if b.len() == len => b,
            _ => vec![0; len],
        }
    }

    /// A block that is `buf[range]` (as for [`Ring::push_block`]), kept in
    /// `buf` itself.
    pub fn push_chunk(
        &mut self,
        label: &str,
        stderr: bool,
        buf: Vec<u8>,
        range: std::ops::Range<usize>,
        lines: u32,
    ) {
        debug_assert_eq!(memchr_iter(b'\n', &buf[range.clone()]).count(), lines as usize);
        if lines > 0 {
            let label = self.label_id(label);
            self.entries.push_back(Entry {
                seq: self.next_seq,
                lines,
                len: range.len() as u32,
                label,
                stderr,
                chunk: true,
                start: range.start as u32,
            });
            self.chunk_bytes += buf.capacity();
            self.chunks.push_back(buf);
            self.lines += lines as usize;
            self.next_seq += u64::from(lines);
            self.trim();
        }
    }

    fn held(&self) -> usize {
        self.text.len() + self.chunk_bytes
    }

    fn append(&mut self, label: &str, stderr: bool, parts: &[&[u8]], lines: u32) {
        if lines == 0 {
            return;
        }
        let label = self.label_id(label);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.entries.push_back(Entry {
            seq: self.next_seq,
            lines,
            len: len as u32,
            label,
            stderr,
            chunk: false,
            start: 0,
        });
        for p in parts {
            self.text.extend(p.iter());
        }
        self.lines += lines as usize;
        self.next_seq += u64::from(lines);
        self.trim();
    }

    /// Drop the oldest blocks while the rest still holds `MAX_LINES`
    /// lines, and the oldest lines while the bytes pass `MAX_BYTES`
    /// (cutting into a block only then: lines are long when that bound
    /// bites, so the newlines to count are few). Finding the line to cut
    /// at in a block of short lines would cost a search per line, which is
    /// what blocks are for avoiding; so the ring keeps between `MAX_LINES`
    /// and one block more, its memory bounded by the bytes.
    fn trim(&mut self) {
        while let Some(front) = self.entries.front().copied() {
            let over_bytes = self.held().saturating_sub(MAX_BYTES);
            let whole = self.lines - front.lines as usize >= MAX_LINES
                || over_bytes >= front.len as usize
                || (front.chunk && over_bytes > 0);
            let (cut_lines, cut_bytes) = if whole {
                (front.lines as usize, front.len as usize)
            } else if over_bytes > 0 {
                first_lines(&self.text, front.len as usize, over_bytes)
            } else {
                break;
            };
            self.lines -= cut_lines;
            if cut_lines == front.lines as usize {
                self.entries.pop_front();
                if front.chunk {
                    if let Some(buf) = self.chunks.pop_front() {
                        self.chunk_bytes -= buf.capacity();
                        self.spare = Some(buf);
                    }
                } else {
                    self.text.drain(..cut_bytes);
                }
            } else if let Some(f) = self.entries.front_mut() {
                self.text.drain(..cut_bytes);
                f.seq += cut_lines as u64;
                f.lines -= cut_lines as u32;
                f.len -= cut_bytes as u32;
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

    /// The lines of entry `e`, whose text starts at `start` in `text`, or
    /// is in chunk `chunk`.
    fn lines_of(
        &self,
        e: &Entry,
        start: usize,
        chunk: usize,
    ) -> impl DoubleEndedIterator<Item = LogLine> + '_ {
        let mut bytes = Vec::with_capacity(e.len as usize);
        if e.chunk {
            let from = e.start as usize;
            if let Some(c) = self.chunks.get(chunk) {
                bytes.extend_from_slice(&c[from..from + e.len as usize]);
            }
        } else {
            let (a, b) = span(&self.text, start, e.len as usize);
            bytes.extend_from_slice(a);
            bytes.extend_from_slice(b);
        }
        let (label, stderr, seq) = (&self.labels[e.label as usize], e.stderr, e.seq);
        let mut lines = Vec::with_capacity(e.lines as usize);
        let mut from = 0;
        for nl in memchr_iter(b'\n', &bytes) {
            lines.push(LogLine {
                seq: seq + lines.len() as u64,
                label: label.clone(),
                stderr,
                text: String::from_utf8_lossy(&bytes[from..nl]).into_owned(),
            });
            from = nl + 1;
        }
        lines.into_iter()
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
        let (mut start, mut chunk) = (0, 0);
        self.entries
            .iter()
            .filter_map(move |e| {
                let at = (start, chunk);
                if e.chunk {
                    chunk += 1;
                } else {
                    start += e.len as usize;
                }
                (e.seq + u64::from(e.lines) > from).then_some((e, at))
            })
            .flat_map(move |(e, (at, chunk))| self.lines_of(e, at, chunk))
            .filter(move |l| l.seq >= from && keep(l))
    }

    /// The last `n` lines that `keep` accepts, oldest first.
    pub fn last(&self, n: usize, keep: impl Fn(&LogLine) -> bool) -> Vec<LogLine> {
        let (mut end, mut chunk) = (self.text.len(), self.chunks.len());
        let mut out = Vec::new();
        for e in self.entries.iter().rev() {
            if out.len() == n {
                break;
            }
            if e.chunk {
                chunk -= 1;
            } else {
                end -= e.len as usize;
            }
            for line in self.lines_of(e, end, chunk).rev() {
                if out.len() == n {
                    break;
                }
                if keep(&line) {
                    out.push(line);
                }
            }
        }
        out.reverse();
        out
    }
}

/// Bytes `start..start + len` of `text`, as its two contiguous parts.
fn span(text: &VecDeque<u8>, start: usize, len: usize) -> (&[u8], &[u8]) {
    let (a, b) = text.as_slices();
    let end = start + len;
    let first = &a[start.min(a.len())..end.min(a.len())];
    let second = &b[start.saturating_sub(a.len())..end.saturating_sub(a.len())];
    (first, second)
}

/// In the first `len` bytes of `text` (whole lines), the fewest whole
/// lines that hold at least `bytes` bytes: (lines, bytes).
fn first_lines(text: &VecDeque<u8>, len: usize, bytes: usize) -> (usize, usize) {
    let (a, b) = span(text, 0, len);
    // The first newline at or past byte `bytes - 1` ends the cut.
    let from = bytes.saturating_sub(1);
    let cut = if from < a.len() {
        memchr::memchr(b'\n', &a[from..]).map(|i| from + i + 1)
    } else {
        None
    }
    .or_else(|| {
        let from_b = from.saturating_sub(a.len());
        memchr::memchr(b'\n', &b[from_b.min(b.len())..]).map(|i| a.len() + from_b + i + 1)
    })
    .unwrap_or(len);
    let lines = memchr_iter(b'\n', &a[..cut.min(a.len())]).count()
        + memchr_iter(b'\n', &b[..cut.saturating_sub(a.len())]).count();
    (lines, cut)
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
        assert_eq!(r.lines, MAX_LINES);
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

    #[test]
    fn blocks_read_back_as_lines_and_whole_blocks_go_past_the_line_bound() {
        let mut r = Ring::default();
        let block: Vec<u8> = (0..700).flat_map(|i| format!("l{i}\n").into_bytes()).collect();
        r.push_block("w.1", false, &block, 700);
        r.push_block("w.1", false, &block, 700);
        r.push("w.2", true, b"single");
        r.push_block("w.1", false, &block, 700);
        // 2101 lines pushed: the first block went, the second stays since
        // without it fewer than MAX_LINES would be left.
        assert_eq!(r.next_seq(), 2101);
        let all: Vec<LogLine> = r.since(0, |_| true).collect();
        assert_eq!(all.len(), 1401);
        assert_eq!((all[0].seq, all[0].text.as_str()), (700, "l0"));
        assert_eq!((all[700].seq, all[700].text.as_str()), (1400, "single"));
        assert!(all[700].stderr && all[700].label == "w.2");
        assert_eq!((all[1400].seq, all[1400].text.as_str()), (2100, "l699"));
        assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        let from: Vec<u64> = r.since(2098, |_| true).map(|l| l.seq).collect();
        assert_eq!(from, [2098, 2099, 2100]);
        let last = r.last(3, |l| l.label == "w.1");
        assert_eq!(
            last.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["l697", "l698", "l699"]
        );
        assert_eq!(r.last(2, |l| l.label == "w.2")[0].text, "single");
    }

    #[test]
    fn a_block_larger_than_the_byte_bound_keeps_its_newest_lines() {
        let mut r = Ring::default();
        let line = vec![b'z'; 4095];
        let mut block = Vec::new();
        for _ in 0..300 {
            block.extend_from_slice(&line);
            block.push(b'\n');
        }
        r.push_block("w.1", false, &block, 300);
        assert!(r.text.len() <= MAX_BYTES);
        assert_eq!(r.since(0, |_| true).count(), MAX_BYTES / 4096);
        assert_eq!(r.since(0, |_| true).next().map(|l| l.seq), Some(300 - 256));
    }

    #[test]
    fn chunks_keep_their_place_among_copied_lines_and_come_back_as_spares() {
        let mut r = Ring::default();
        let mut buf = vec![0u8; 64 * 1024];
        let block: Vec<u8> = (0..600).flat_map(|i| format!("c{i:05}\n").into_bytes()).collect();
        buf[10..10 + block.len()].copy_from_slice(&block);
        r.push("w.1", false, b"before");
        let first = buf.as_ptr();
        r.push_chunk("w.1", false, buf, 10..10 + block.len(), 600);
        r.push("w.1", true, b"after");
        let all: Vec<LogLine> = r.since(0, |_| true).collect();
        assert_eq!(all.len(), 602);
        assert_eq!((all[0].seq, all[0].text.as_str()), (0, "before"));
        assert_eq!((all[1].seq, all[1].text.as_str()), (1, "c00000"));
        assert_eq!((all[600].seq, all[600].text.as_str()), (600, "c00599"));
        assert_eq!(
            (all[601].seq, all[601].text.as_str(), all[601].stderr),
            (601, "after", true)
        );
        assert_eq!(r.last(2, |_| true)[0].text, "c00599");
        // Two more chunks: the first leaves (over MAX_LINES without it)
        // and its buffer is handed back.
        for _ in 0..2 {
            let mut b = r.take_spare(64 * 1024);
            b[..block.len()].copy_from_slice(&block);
            r.push_chunk("w.1", false, b, 0..block.len(), 600);
        }
        let spare = r.take_spare(64 * 1024);
        assert_eq!(spare.as_ptr(), first);
        let first_kept = r.since(0, |_| true).next().map(|l| (l.seq, l.text));
        assert_eq!(first_kept, Some((602, "c00000".to_string())));
        assert_eq!(r.since(0, |_| true).count(), 1200);
        // Past MAX_BYTES in buffers, whole chunks leave.
        for _ in 0..20 {
            let mut b = vec![0u8; 64 * 1024];
            b[..block.len()].copy_from_slice(&block);
            r.push_chunk("w.1", false, b, 0..block.len(), 600);
        }
        assert!(r.held() <= MAX_BYTES);
        assert_eq!(r.next_seq(), 602 + 22 * 600);
        assert_eq!(
            r.since(0, |_| true).last().map(|l| l.seq),
            Some(602 + 22 * 600 - 1)
        );
    }
}
