//! Children's output: line framing, prefixes, and the one writer per stream.
//!
//! Each pipe has a [`LineFramer`] that turns reads into whole lines (cut at
//! 64 KiB). Lines go whole into a [`Sink`], the only writer of brood's
//! stdout or stderr, which writes without blocking: when the reader is slow
//! the sink's buffer fills, the loop stops reading children's pipes (they
//! block on write) and signals, reaping and the console carry on.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// Lines longer than this are cut into pieces of this size, each prefixed.
pub const MAX_LINE: usize = 64 * 1024;

/// Above this many pending bytes a sink asks the loop to stop reading pipes.
pub const HIGH_WATER: usize = 1024 * 1024;

/// Splits a byte stream into lines.
#[derive(Default)]
pub struct LineFramer {
    partial: Vec<u8>,
    /// A 64 KiB piece was just cut; a newline right after it ends that
    /// piece rather than making an empty line.
    just_cut: bool,
}

/// Where a [`LineFramer`] puts the lines it cuts.
pub trait Lines {
    /// One line, without its newline.
    fn line(&mut self, line: &[u8]);

    /// `data` starts with whole lines, end to end: take as many as suit,
    /// each with its newline and none over [`MAX_LINE`], and return how many
    /// bytes they took; the framer deals with the rest. The default passes
    /// them one by one to [`Lines::line`]; a consumer that can take a run of
    /// lines at once (the sink's prefixing loop) saves a call per line.
    fn whole_lines(&mut self, data: &[u8]) -> usize {
        one_by_one(self, data)
    }
}

impl<F: FnMut(&[u8])> Lines for F {
    fn line(&mut self, line: &[u8]) {
        self(line)
    }
}

/// [`Lines::whole_lines`] a line at a time.
pub fn one_by_one<L: Lines + ?Sized>(out: &mut L, data: &[u8]) -> usize {
    let mut start = 0;
    while let Some(i) = newline(&data[start..]) {
        if i > MAX_LINE {
            break;
        }
        out.line(&data[start..start + i]);
        start += i + 1;
    }
    start
}

impl LineFramer {
    /// Feed bytes; `out` gets every complete line, without its newline.
    pub fn feed<L: Lines + ?Sized>(&mut self, mut data: &[u8], out: &mut L) {
        loop {
            // The common case, whole lines and nothing pending: they go as
            // they lie in the read. Reads rarely end on a line boundary, so
            // this follows the end of a pending line too.
            if self.partial.is_empty() && !self.just_cut {
                let used = out.whole_lines(data);
                data = &data[used..];
            }
            if data.is_empty() {
                break;
            }
            if std::mem::take(&mut self.just_cut) && data[0] == b'\n' {
                data = &data[1..];
                continue;
            }
            let room = MAX_LINE - self.partial.len();
            let window = &data[..data.len().min(room)];
            match newline(window) {
                Some(i) => {
                    if self.partial.is_empty() {
                        out.line(&data[..i]);
                    } else {
                        self.partial.extend_from_slice(&data[..i]);
                        out.line(&self.partial);
                        self.partial.clear();
                    }
                    data = &data[i + 1..];
                }
                None if window.len() == room => {
                    // A full 64 KiB piece with no newline: cut it here.
                    if self.partial.is_empty() {
                        out.line(window);
                    } else {
                        self.partial.extend_from_slice(window);
                        out.line(&self.partial);
                        self.partial.clear();
                    }
                    data = &data[room..];
                    self.just_cut = true;
                }
                None => {
                    self.partial.extend_from_slice(window);
                    data = &[];
                }
            }
        }
        if self.partial.is_empty() && self.partial.capacity() > MAX_LINE {
            self.partial = Vec::new();
        }
    }

    /// At EOF: the unterminated last line, if any.
    pub fn finish<L: Lines + ?Sized>(&mut self, out: &mut L) {
        if !self.partial.is_empty() {
            out.line(&self.partial);
        }
        self.partial = Vec::new();
    }
}

/// The first newline in `hay`. Lines are short (80 bytes is typical), so
/// the cost is the call, not the scan: libc's memchr tests the first 32
/// bytes at once in one call; the memchr crate's goes through two calls
/// per line. Measured on 512 MiB of 80-byte lines: 227 ms of brood's CPU
/// with libc's, 261 ms with the crate's `memchr`.
fn newline(hay: &[u8]) -> Option<usize> {
    // SAFETY: memchr reads at most `hay.len()` bytes from `hay`, a live
    // slice; the pointer it returns, if any, is inside that slice.
    let p = unsafe { libc::memchr(hay.as_ptr().cast(), i32::from(b'\n'), hay.len()) };
    (!p.is_null()).then(|| p as usize - hay.as_ptr() as usize)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum WriteMode {
    /// Our own O_NONBLOCK file description (a reopened pipe or terminal).
    NonBlocking,
    /// A socket: `send` with MSG_DONTWAIT leaves the shared description alone.
    Socket,
    /// A pipe or terminal that could not be reopened (no /proc, or the
    /// reopen refused): its description is blocking and shared, so it is
    /// polled with a zero timeout before each write, and each write is at
    /// most `chunk` bytes, no more than it can then take without blocking.
    Polled { chunk: usize },
    /// A regular file or another device: plain writes (they do not wait
    /// for a reader).
    Blocking,
}

/// One write to a pipe that polled writable. POLLOUT on a pipe means at
/// least one of its page-sized slots is free, and a write of at most
/// PIPE_BUF (one page) bytes then completes at once. (Only another writer
/// of the same pipe filling that slot between the poll and the write could
/// still make it wait, until the reader takes a page.)
const PIPE_CHUNK: usize = libc::PIPE_BUF;

/// One write to a terminal that polled writable. POLLOUT on a terminal
/// means it has room, but not how much: a write waits until all of it is
/// taken. A small chunk keeps that wait within what a terminal that polled
/// writable holds.
const TTY_CHUNK: usize = 256;

/// brood's stdout or stderr, with a buffer of whole lines.
pub struct Sink {
    fd: RawFd,
    _own: Option<OwnedFd>,
    mode: WriteMode,
    buf: Vec<u8>,
    pos: usize,
    /// False after EAGAIN until the loop sees the fd writable again.
    pub writable: bool,
    /// The reader went away (EPIPE): everything for this sink is dropped.
    pub closed: bool,
    pub color: bool,
}

impl Sink {
    /// Open a sink on fd 1 or 2. Pipes and terminals are reopened through
    /// /proc/self/fd with O_NONBLOCK on a new file description of our own:
    /// setting O_NONBLOCK on the inherited one would change it for every
    /// process that shares it (the shell, the other programs in a pipeline).
    pub fn open(fd: RawFd) -> Sink {
        let color = is_terminal(fd) && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let mut sink = Sink {
            fd,
            _own: None,
            mode: WriteMode::Blocking,
            buf: Vec::new(),
            pos: 0,
            writable: true,
            closed: false,
            color,
        };
        // SAFETY: the borrow lives only for this fstat, and fd is one of 0/1/2,
        // which ensure_std_fds keeps open for the whole run.
        let Ok(st) = nix::sys::stat::fstat(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }) else {
            return sink;
        };
        let kind = st.st_mode & libc::S_IFMT;
        if kind == libc::S_IFSOCK {
            sink.mode = WriteMode::Socket;
        } else if kind == libc::S_IFIFO || kind == libc::S_IFCHR {
            let path = format!("/proc/self/fd/{fd}\0");
            let flags = libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
            // SAFETY: `path` ends in the NUL pushed above and outlives the call.
            let new = unsafe { libc::open(path.as_ptr().cast(), flags) };
            if new >= 0 {
                // SAFETY: `new` was just opened here and nothing else owns it.
                let own = unsafe { OwnedFd::from_raw_fd(new) };
                sink.fd = own.as_raw_fd();
                sink._own = Some(own);
                sink.mode = WriteMode::NonBlocking;
            } else if kind == libc::S_IFIFO {
                sink.mode = WriteMode::Polled { chunk: PIPE_CHUNK };
            } else if is_terminal(fd) {
                sink.mode = WriteMode::Polled { chunk: TTY_CHUNK };
            }
        }
        sink
    }

    /// A sink that is never written (stderr when it is stdout).
    pub fn unused() -> Sink {
        Sink {
            fd: -1,
            _own: None,
            mode: WriteMode::Blocking,
            buf: Vec::new(),
            pos: 0,
            writable: false,
            closed: true,
            color: false,
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd
    }

    /// Whether the loop can register this fd for writability.
    pub fn pollable(&self) -> bool {
        self.mode != WriteMode::Blocking
    }

    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn has_room(&self) -> bool {
        self.closed || self.pending() < HIGH_WATER
    }

    /// Append one whole line: prefix, text and a newline.
    pub fn push_line(&mut self, prefix: &[u8], line: &[u8]) {
        if self.closed {
            return;
        }
        self.buf.reserve(prefix.len() + line.len() + 1);
        self.buf.extend_from_slice(prefix);
        self.buf.extend_from_slice(line);
        self.buf.push(b'\n');
    }

    /// [`Sink::push_line`] for each of the whole lines `data` starts with
    /// (each ending in a newline, none over [`MAX_LINE`]), in one loop:
    /// the prefixer's inner loop. Returns the bytes used and the lines
    /// found; a closed sink finds them all the same and keeps nothing.
    pub fn push_lines(&mut self, prefix: &[u8], data: &[u8]) -> (usize, u32) {
        let mut start = 0;
        let mut count = 0u32;
        while let Some(i) = newline(&data[start..]) {
            if i > MAX_LINE {
                break;
            }
            if !self.closed {
                // The line and its newline in one copy.
                self.buf.reserve(prefix.len() + i + 1);
                self.buf.extend_from_slice(prefix);
                self.buf.extend_from_slice(&data[start..start + i + 1]);
            }
            start += i + 1;
            count += 1;
        }
        (start, count)
    }

    /// Append bytes that are already whole lines (brood's own messages).
    /// brood's own words are dropped past `4 * HIGH_WATER` waiting bytes: a
    /// stalled reader must not make brood's memory grow.
    pub fn push_raw(&mut self, bytes: &[u8]) {
        if !self.closed && self.pending() + bytes.len() <= 4 * HIGH_WATER {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Write what can be written now. Err(EPIPE) means the reader is gone;
    /// the sink is then closed and drops everything.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.pos < self.buf.len() && self.writable && !self.closed {
            let mut chunk = &self.buf[self.pos..];
            if let WriteMode::Polled { chunk: most } = self.mode {
                if !poll_writable(self.fd) {
                    self.writable = false;
                    break;
                }
                if chunk.len() > most {
                    // End at a line end if one fits, so that a line shorter
                    // than a chunk is still written at once.
                    let window = &chunk[..most];
                    let end = memchr::memrchr(b'\n', window).map_or(most, |i| i + 1);
                    chunk = &chunk[..end];
                }
            }
            // SAFETY: `chunk` is a live slice of `self.buf` and the length
            // passed is its own; the kernel only reads from it.
            let rc = unsafe {
                match self.mode {
                    WriteMode::Socket => libc::send(
                        self.fd,
                        chunk.as_ptr().cast(),
                        chunk.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    ),
                    _ => libc::write(self.fd, chunk.as_ptr().cast(), chunk.len()),
                }
            };
            if rc >= 0 {
                self.pos += rc as usize;
                continue;
            }
            match Errno::last() {
                Errno::EINTR => continue,
                Errno::EAGAIN => self.writable = false,
                e => {
                    self.close();
                    return Err(io::Error::from(e));
                }
            }
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            if self.buf.capacity() > 4 * HIGH_WATER {
                self.buf = Vec::new();
            }
        } else if self.pos > HIGH_WATER {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Ok(())
    }

    /// Write everything, waiting for the reader if need be (at exit).
    pub fn flush_blocking(&mut self) {
        while self.pending() > 0 && !self.closed {
            if self.flush().is_err() {
                return;
            }
            if !self.writable {
                let mut pfd = libc::pollfd {
                    fd: self.fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd on the stack, and nfds is 1.
                unsafe { libc::poll(&mut pfd, 1, -1) };
                self.writable = true;
            }
        }
    }

    pub fn close(&mut self) {
        self.closed = true;
        self.buf = Vec::new();
        self.pos = 0;
    }
}

/// Whether `fd` polls writable now (or in error, which the write then
/// reports), without waiting.
fn poll_writable(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd on the stack, nfds is 1, no wait.
        let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
        if rc >= 0 {
            return rc > 0;
        }
        if Errno::last() != Errno::EINTR {
            return true;
        }
    }
}

/// Whether two fds are the same pipe, terminal or file (`2>&1`).
pub fn same_file(a: RawFd, b: RawFd) -> bool {
    // SAFETY: the borrow lives only for this fstat; the callers pass 1 and
    // 2, which ensure_std_fds keeps open for the whole run.
    let stat = |fd: RawFd| nix::sys::stat::fstat(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }).ok();
    match (stat(a), stat(b)) {
        (Some(x), Some(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino && x.st_rdev == y.st_rdev,
        _ => false,
    }
}

pub fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty takes no pointers; a closed or bad fd only gives 0.
    unsafe { libc::isatty(fd) == 1 }
}

const PALETTE: [&str; 6] = ["36", "33", "32", "35", "34", "31"];

/// `LABEL | ` padded to `width`, colored when asked. The color is chosen
/// by `color_index`: the program's place, so that every instance of a
/// program shares one color, as in foreman and honcho.
pub fn prefix(label: &str, width: usize, color_index: usize, color: bool) -> Vec<u8> {
    let pad = width.saturating_sub(label.len());
    let mut out = Vec::with_capacity(label.len() + pad + 16);
    if color {
        let c = PALETTE[color_index % PALETTE.len()];
        out.extend_from_slice(format!("\x1b[{c}m{label}{:pad$} |\x1b[0m ", "").as_bytes());
    } else {
        out.extend_from_slice(label.as_bytes());
        out.resize(out.len() + pad, b' ');
        out.extend_from_slice(b" | ");
    }
    out
}

/// Local wall-clock time as `HH:MM:SS.mmm `, for --timestamps.
pub fn timestamp() -> Vec<u8> {
    // SAFETY: both are plain C structs for which all-zero bytes are a valid
    // value (numbers, and a null tm_zone pointer).
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to the locals above, valid for writes;
    // localtime_r is the reentrant form and keeps no pointer to them.
    unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
        libc::localtime_r(&ts.tv_sec, &mut tm);
    }
    format!(
        "{:02}:{:02}:{:02}.{:03} ",
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        ts.tv_nsec / 1_000_000
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut f = LineFramer::default();
        let mut lines = Vec::new();
        for c in chunks {
            f.feed(c, &mut |l: &[u8]| lines.push(l.to_vec()));
        }
        f.finish(&mut |l: &[u8]| lines.push(l.to_vec()));
        lines
    }

    #[test]
    fn split_writes_make_whole_lines() {
        assert_eq!(
            frame(&[b"he", b"llo\nwor", b"ld\n"]),
            vec![b"hello".to_vec(), b"world".to_vec()]
        );
    }

    #[test]
    fn unterminated_last_line_is_kept() {
        assert_eq!(frame(&[b"a\nb"]), vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn empty_lines_are_lines() {
        assert_eq!(frame(&[b"\n\n"]), vec![b"".to_vec(), b"".to_vec()]);
    }

    #[test]
    fn long_lines_are_cut_at_64k() {
        let mut big = vec![b'x'; MAX_LINE * 2 + 10];
        big.push(b'\n');
        let lines = frame(&[&big[..1000], &big[1000..]]);
        assert_eq!(
            lines.iter().map(|l| l.len()).collect::<Vec<_>>(),
            [MAX_LINE, MAX_LINE, 10]
        );
    }

    #[test]
    fn exactly_64k_line_is_one_piece() {
        let mut big = vec![b'y'; MAX_LINE];
        big.push(b'\n');
        let lines = frame(&[&big[..MAX_LINE], &big[MAX_LINE..], b"next\n"]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1], b"next");
        assert_eq!(lines[0].len(), MAX_LINE);
    }

    #[test]
    fn bytes_pass_through() {
        assert_eq!(frame(&[b"\xff\xfe\x00z\n"]), vec![b"\xff\xfe\x00z".to_vec()]);
    }

    #[test]
    fn prefix_pads_to_width() {
        assert_eq!(prefix("a.1", 5, 0, false), b"a.1   | ");
    }
}
