//! The `--events` JSON-lines writer: one object per line, each written
//! whole or not at all, and never blocking the loop.
//!
//! - A regular file gets each line in one `write`. If the disk fills midway
//!   the part that was written is cut off again (`ftruncate`), so a reader
//!   never sees half an event glued to the next; the event is counted lost.
//! - A FIFO or socket is written without blocking: lines wait in a bounded
//!   queue while the reader is slow (the loop flushes it when the fd is
//!   writable), and are counted lost past the bound. A FIFO with no reader
//!   is refused at start instead of blocking in `open`.
//!
//! Lost events are reported at the end, and make the exit status 1.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::core::event::Event;
use crate::error::Error;

/// Most bytes of events waiting for a slow FIFO reader.
const QUEUE_LIMIT: usize = 4 << 20;

/// How long brood waits at exit for a slow FIFO reader to take the rest.
const FINAL_WAIT: Duration = Duration::from_secs(2);

/// Recent events kept for `brood ctl events`: at most this many, and this
/// many bytes.
const RING_EVENTS: usize = 10_000;
const RING_BYTES: usize = 4 << 20;

pub struct Events {
    file: Option<File>,
    path: PathBuf,
    /// A FIFO or socket: written without blocking, through `queue`.
    stream: bool,
    queue: Vec<u8>,
    lost: u64,
    first_error: Option<String>,
    /// The sequence number the next event gets (from 1).
    next_seq: u64,
    /// Recent events with their sequence numbers, for `ctl events`; None
    /// where nobody can ask (spawn mode).
    ring: Option<VecDeque<(u64, String)>>,
    ring_bytes: usize,
}

impl Events {
    pub fn none() -> Events {
        Events {
            file: None,
            path: PathBuf::new(),
            stream: false,
            queue: Vec::new(),
            lost: 0,
            first_error: None,
            next_seq: 1,
            ring: None,
            ring_bytes: 0,
        }
    }

    /// The writer for `--events PATH`, or none without the flag.
    pub fn for_flag(path: Option<&Path>) -> Result<Events, Error> {
        match path {
            Some(p) => Events::open(p),
            None => Ok(Events::none()),
        }
    }

    /// Open (append, create 0600, never through a symlink, never blocking).
    pub fn open(path: &Path) -> Result<Events, Error> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => Error::usage(format!(
                    "events file '{}' is a symlink; brood does not follow it",
                    path.display()
                )),
                Some(libc::ENXIO) => Error::usage(format!(
                    "events file '{}' is a FIFO with no reader; start the reader first",
                    path.display()
                )),
                _ => Error::usage(format!("cannot open events file '{}': {e}", path.display())),
            })?;
        let kind = file
            .metadata()
            .map_err(|e| Error::usage(format!("cannot open events file '{}': {e}", path.display())))?
            .file_type();
        let stream = kind.is_fifo() || kind.is_socket() || kind.is_char_device();
        if !stream {
            // A regular file never blocks; plain writes keep the code simple.
            // SAFETY: fcntl on an fd this function owns.
            unsafe {
                let fd = file.as_raw_fd();
                let flags = libc::fcntl(fd, libc::F_GETFL);
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
        Ok(Events {
            file: Some(file),
            path: path.to_path_buf(),
            stream,
            ..Events::none()
        })
    }

    /// Keep recent events for `brood ctl events` (run mode).
    pub fn with_ring(mut self) -> Events {
        self.ring = Some(VecDeque::new());
        self
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The oldest sequence number still kept (`next_seq` when none is).
    pub fn oldest_seq(&self) -> u64 {
        self.ring
            .as_ref()
            .and_then(|r| r.front().map(|(s, _)| *s))
            .unwrap_or(self.next_seq)
    }

    /// Kept events with a sequence number of `from` or more, as JSON text.
    pub fn since(&self, from: u64) -> impl Iterator<Item = &str> {
        self.ring
            .iter()
            .flatten()
            .filter(move |(s, _)| *s >= from)
            .map(|(_, line)| line.as_str())
    }

    /// The fd the loop watches for writability while lines wait.
    pub fn stream_fd(&self) -> Option<RawFd> {
        self.file.as_ref().filter(|_| self.stream).map(AsRawFd::as_raw_fd)
    }

    /// Write `{"ts": ..., "event": kind, ...fields}`.
    pub fn emit(&mut self, event: &Event) {
        self.emit_at(SystemTime::now(), event);
    }

    /// Emit with the time the thing happened (an exit: when it was reaped,
    /// not when the loop got round to writing it).
    pub fn emit_at(&mut self, at: SystemTime, event: &Event) {
        if self.file.is_none() && self.ring.is_none() {
            return;
        }
        let ts = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut line = match serde_json::to_string(event) {
            // `{"event":...}` becomes `{"ts":...,"seq":...,"event":...}`.
            Ok(body) => format!("{{\"ts\":{ts},\"seq\":{seq},{}", &body[1..]),
            Err(e) => {
                self.lose(format!("cannot encode an event: {e}"));
                return;
            }
        };
        if let Some(ring) = self.ring.as_mut() {
            self.ring_bytes += line.len();
            ring.push_back((seq, line.clone()));
            while ring.len() > RING_EVENTS || self.ring_bytes > RING_BYTES {
                match ring.pop_front() {
                    Some((_, old)) => self.ring_bytes -= old.len(),
                    None => break,
                }
            }
        }
        if self.file.is_none() {
            return;
        }
        line.push('\n');
        if self.stream {
            if self.queue.len() + line.len() > QUEUE_LIMIT {
                self.lose("its reader is not reading".to_string());
                return;
            }
            self.queue.extend_from_slice(line.as_bytes());
            self.flush();
        } else {
            self.write_whole(line.as_bytes());
        }
    }

    /// Write queued lines to a FIFO as far as its reader takes them.
    pub fn flush(&mut self) {
        let Some(fd) = self.file.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        while !self.queue.is_empty() {
            // SAFETY: `queue` is valid for reads of its length for the call.
            let rc = unsafe { libc::write(fd, self.queue.as_ptr().cast(), self.queue.len()) };
            if rc > 0 {
                self.queue.drain(..rc as usize);
                continue;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return,
                _ => {
                    // The reader is gone: what waits cannot be written.
                    let lines = self.queue.iter().filter(|&&b| b == b'\n').count() as u64;
                    self.queue.clear();
                    self.lost += lines.saturating_sub(1);
                    self.lose(err.to_string());
                    return;
                }
            }
        }
    }

    /// One line to a regular file, whole or not at all.
    fn write_whole(&mut self, line: &[u8]) {
        let Some(file) = self.file.as_ref() else { return };
        let fd = file.as_raw_fd();
        let mut written = 0;
        let error = loop {
            // SAFETY: the slice is valid for reads of its length for the call.
            let rc = unsafe { libc::write(fd, line[written..].as_ptr().cast(), line.len() - written) };
            if rc > 0 {
                written += rc as usize;
                if written == line.len() {
                    return;
                }
                continue;
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break err;
        };
        if written > 0 {
            // Cut the torn part off again, so the next event starts a line.
            if let Ok(meta) = file.metadata() {
                let _ = file.set_len(meta.len().saturating_sub(written as u64));
            }
        }
        self.lose(error.to_string());
    }

    fn lose(&mut self, reason: String) {
        self.lost += 1;
        if self.first_error.is_none() {
            log::error!("cannot write to events file '{}': {reason}", self.path.display());
            self.first_error = Some(reason);
        }
    }

    /// At exit: give a slow reader a little time for what waits, then say
    /// what was lost. True when every event was written.
    pub fn finish(&mut self) -> bool {
        let deadline = Instant::now() + FINAL_WAIT;
        while !self.queue.is_empty() {
            self.flush();
            let Some(fd) = self.stream_fd() else { break };
            let left = deadline.saturating_duration_since(Instant::now());
            if self.queue.is_empty() || left.is_zero() {
                break;
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        }
        if !self.queue.is_empty() {
            let lines = self.queue.iter().filter(|&&b| b == b'\n').count() as u64;
            self.queue.clear();
            self.lost += lines;
        }
        if self.lost > 0 {
            log::error!(
                "{} event(s) could not be written to '{}' ({})",
                self.lost,
                self.path.display(),
                self.first_error
                    .as_deref()
                    .unwrap_or("its reader did not take them")
            );
        }
        self.lost == 0
    }
}
