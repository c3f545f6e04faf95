//! Children's output and brood's own words: reading pipes within a per-turn
//! budget, framing lines, prefixing them, and writing them whole to the two
//! sinks (brood's stdout and stderr) without ever blocking the loop. Lines
//! of instances with a log file also go to `crate::logfile`'s buffers,
//! written once per turn.

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::time::{Instant, SystemTime};

use mio::unix::SourceFd;
use mio::Token;

use super::Supervisor;
use crate::children::Stream;
use crate::control::ring::Ring;
use crate::control::ring::CHUNK_MIN;
use crate::core::event::Event;
use crate::core::ids::ChildId;
use crate::core::timers::Timer;
use crate::logfile::{Clock, Dropped, LogFiles};
use crate::logging;
use crate::output::{self, Sink};
use crate::probe::LineMatcher;

/// A pipe's default capacity: one read takes all a pipe holds, and the
/// buffer stays in cache (1 MiB reads measured slower).
pub(super) const DEFAULT_PIPE: usize = 64 * 1024;

/// Reads per loop turn before the loop polls again, so a flood from the
/// children never delays signals or the console.
const READ_BUDGET: usize = 128;

const FIRST_PIPE: usize = 16;

/// Buffered output written even while the loop still has work: the C
/// prefixer's threshold (half its 256 KiB buffer).
const BUSY_FLUSH: usize = 128 * 1024;

pub(super) fn pipe_token(id: ChildId, stream: Stream) -> Token {
    Token(FIRST_PIPE + (id.0 as usize) * 2 + stream as usize)
}

/// A pipe token's mark in the ready queue: epoll said the pipe is empty
/// and has no writer left, so its end needs no read(2) to be seen.
const HUNG_UP: usize = 1 << 62;

pub(super) fn hung_up(token: Token) -> Token {
    Token(token.0 | HUNG_UP)
}

pub(super) fn token_pipe(token: Token) -> (ChildId, Stream) {
    let i = token.0 - FIRST_PIPE;
    (ChildId((i / 2) as u64), token_stream(token))
}

pub(super) fn token_stream(token: Token) -> Stream {
    if (token.0 - FIRST_PIPE) % 2 == 0 {
        Stream::Stdout
    } else {
        Stream::Stderr
    }
}

/// One read(2), retried on EINTR: Some(n) (0 at EOF), None when there is
/// nothing to read now. Another error ends the pipe like EOF.
fn read_some(fd: i32, buf: &mut [u8]) -> Option<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of its length for the call.
        let rc = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if rc >= 0 {
            return Some(rc as usize);
        }
        match nix::errno::Errno::last() {
            nix::errno::Errno::EINTR => continue,
            nix::errno::Errno::EAGAIN => return None,
            _ => return Some(0),
        }
    }
}

/// `line` without the CRs at its end.
fn trim_cr(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., b'\r'] = line {
        line = rest;
    }
    line
}

/// Where the lines of one read go: the sink (prefixed), the program's
/// ctl logs ring, the instance's log file, the `ready = { log }` matcher.
struct ReadLines<'a, 'd> {
    /// The read, to tell lines that lie in it from assembled ones.
    data: &'d [u8],
    sink: &'a mut Sink,
    prefix: &'a [u8],
    timestamps: bool,
    /// A terminal's lines end in CR LF.
    tty: bool,
    ring: Option<&'a mut Ring>,
    label: &'a str,
    stderr: bool,
    /// Lines that lie one after another in this read, each with its
    /// newline, go to the ring as one block: `data[run.0..run.1]`, `run.2`
    /// lines. Others (the end of a line begun in an earlier read, a 64 KiB
    /// piece) go alone, in order.
    run: (usize, usize, u32),
    log: Option<(&'a mut LogFiles, usize, Clock)>,
    ready_log: Option<&'a LineMatcher>,
    matched: bool,
}

impl ReadLines<'_, '_> {
    /// `data[at..end]` holds `lines` whole lines, each with its newline:
    /// extend the ring's run with them, or begin a new one.
    fn in_run(&mut self, at: usize, end: usize, lines: u32) {
        if self.run.2 > 0 && at == self.run.1 {
            self.run.1 = end;
            self.run.2 += lines;
        } else {
            self.end_run();
            self.run = (at, end, lines);
        }
    }

    /// Give the ring the run so far.
    fn end_run(&mut self) {
        if let Some(r) = self.ring.as_mut().filter(|_| self.run.2 > 0) {
            r.push_block(
                self.label,
                self.stderr,
                &self.data[self.run.0..self.run.1],
                self.run.2,
            );
            self.run.2 = 0;
        }
    }
}

impl output::Lines for ReadLines<'_, '_> {
    fn line(&mut self, line: &[u8]) {
        // A terminal ends lines with CR LF (ONLCR); CRs just before the
        // LF are part of the line end. A CR elsewhere (a progress bar
        // redrawing its line) is kept, like every other byte.
        let line = if self.tty { trim_cr(line) } else { line };
        if !self.matched && self.ready_log.is_some_and(|m| m.is_match(line)) {
            self.matched = true;
        }
        if self.ring.is_some() {
            let n = self.data.len();
            let at = (line.as_ptr() as usize).wrapping_sub(self.data.as_ptr() as usize);
            let end = at.wrapping_add(line.len());
            if at <= n && end < n && self.data[end] == b'\n' {
                self.in_run(at, end + 1, 1);
            } else {
                self.end_run();
                if let Some(r) = self.ring.as_mut() {
                    r.push(self.label, self.stderr, line);
                }
            }
        }
        if let Some((logs, file, clock)) = self.log.as_mut() {
            logs.push(*file, line, clock);
        }
        if self.timestamps {
            let mut p = output::timestamp();
            p.extend_from_slice(self.prefix);
            self.sink.push_line(&p, line);
        } else {
            self.sink.push_line(self.prefix, line);
        }
    }

    fn whole_lines(&mut self, data: &[u8]) -> usize {
        // Lines that need nothing but their prefix (the common case) go to
        // the sink in its own loop, and to a log file as one block; the rest
        // one by one.
        if self.tty || self.timestamps || self.ready_log.is_some() {
            return output::one_by_one(self, data);
        }
        let (used, count) = self.sink.push_lines(self.prefix, data);
        if count > 0 {
            if let Some((logs, file, clock)) = self.log.as_mut() {
                logs.push_lines(*file, &data[..used], count, clock);
            }
            let at = (data.as_ptr() as usize).wrapping_sub(self.data.as_ptr() as usize);
            if at <= self.data.len() {
                self.in_run(at, at + used, count);
            }
        }
        used
    }
}

impl Supervisor {
    pub(super) fn sink(&self, stream: Stream) -> &Sink {
        match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr if self.shared_streams => &self.stdout,
            Stream::Stderr => &self.stderr,
        }
    }

    /// Where brood's own words and children's stderr go.
    pub(super) fn err_sink(&mut self) -> &mut Sink {
        if self.shared_streams {
            &mut self.stdout
        } else {
            &mut self.stderr
        }
    }

    /// Read ready pipes within the budget, then write what can be written.
    pub(super) fn pump(&mut self) {
        let mut budget = READ_BUDGET;
        let mut blocked = Vec::new();
        while budget > 0 {
            let Some(marked) = self.ready.pop_front() else {
                break;
            };
            let token = Token(marked.0 & !HUNG_UP);
            let (id, stream) = token_pipe(token);
            if self
                .children
                .get(&id)
                .is_none_or(|c| c.pipes[stream as usize].is_none())
            {
                continue;
            }
            if !self.sink(stream).has_room() {
                blocked.push(token);
                continue;
            }
            budget -= 1;
            if self.read_pipe(id, stream, marked.0 & HUNG_UP != 0) {
                self.ready.push_back(token);
            }
        }
        self.ready.extend(blocked);
        if !self.probes.log_ready.is_empty() {
            self.take_log_ready();
        }
        if self.ready.len() > 1 {
            let mut seen = HashSet::with_capacity(self.ready.len());
            self.ready.retain(|t| seen.insert(*t));
        }
        if self.err_sink().has_room() {
            let queued = logging::take_queued();
            self.err_sink().push_raw(&queued);
        }
        if self
            .console
            .as_ref()
            .is_some_and(|c| c.open && (c.more || !c.pollable))
        {
            self.read_console();
        }
        self.serve_followers();
        if self.stdout.pending() >= BUSY_FLUSH || self.stderr.pending() >= BUSY_FLUSH {
            self.flush_output();
        }
    }

    /// Output waits in the sinks and log buffers until the loop has
    /// nothing else to do ([`Supervisor::output_waiting`]) or holds
    /// [`BUSY_FLUSH`] bytes, as in the C prefixer: a child writing a line
    /// per write then costs brood a read per line, not also a write.
    pub(super) fn flush_output(&mut self) {
        self.flush_logs();
        if let Err(e) = self.stdout.flush() {
            self.on_stdout_error(e);
        }
        if !self.shared_streams {
            let _ = self.stderr.flush();
        }
    }

    /// Whether some output could be written now: the loop then looks for
    /// more work without waiting, and writes it out before it sleeps.
    pub(super) fn output_waiting(&self) -> bool {
        let waits = |s: &Sink| s.pending() > 0 && s.writable && !s.closed;
        waits(&self.stdout) || (!self.shared_streams && waits(&self.stderr)) || self.logs.dirty()
    }

    /// One read from a pipe (none when it `hung_up` empty, unless it is a
    /// terminal's master). True if it may have more; false at EAGAIN or
    /// after EOF (which closes the pipe).
    pub(super) fn read_pipe(&mut self, id: ChildId, stream: Stream, hung_up: bool) -> bool {
        let Some(child) = self.children.get_mut(&id) else {
            return false;
        };
        let Some(pipe) = child.pipes[stream as usize].as_mut() else {
            return false;
        };
        let n = if hung_up && !child.tty {
            0
        } else {
            let Some(n) = read_some(pipe.fd.as_raw_fd(), &mut self.scratch) else {
                return false;
            };
            n
        };
        let sink = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr if self.shared_streams => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        // One cached prefix per stream: each is colored only if its own
        // sink is a terminal.
        let cached = &mut child.prefix[stream as usize];
        if cached.1 != self.width || cached.0.is_empty() {
            cached.0 = output::prefix(&child.label, self.width, child.program.0 as usize, sink.color);
            cached.1 = self.width;
        }
        let opts = &self.opts.output;
        let prefix: &[u8] = if opts.prefix {
            &child.prefix[stream as usize].0
        } else {
            b""
        };
        let ring = self
            .control
            .as_mut()
            .and_then(|c| c.rings.get_mut(&child.program));
        let label = &child.label;
        let (tty, attached) = (child.tty, child.attached);
        let logs = &mut self.logs;
        let log = logs.file_of(child.program, child.n, label);
        let data = &self.scratch[..n];
        let mut lines = ReadLines {
            data,
            sink,
            prefix,
            timestamps: opts.timestamps,
            tty,
            ring,
            label,
            stderr: stream == Stream::Stderr,
            run: (0, 0, 0),
            // One time per read: every line of it was read at once.
            log: log.map(|file| (&mut *logs, file, Clock::new(Instant::now(), SystemTime::now()))),
            ready_log: child.ready_log.as_ref(),
            matched: false,
        };
        // A read that did not fill the buffer took all the pipe held, and
        // the next write to the now empty pipe wakes epoll again (the kernel
        // wakes a pipe's readers on every write to an empty pipe): reading
        // again now would mostly find nothing, or a line, while contending
        // with the writer for the pipe's lock (1.5 million reads for 128 MiB
        // of single-line writes, against 0.6 million when waiting). A
        // terminal gives no such promise: its master is read until EAGAIN.
        let more = if n == 0 {
            pipe.framer.finish(&mut lines);
            false
        } else {
            pipe.framer.feed(data, &mut lines);
            tty || n == self.scratch.len()
        };
        let ReadLines {
            mut ring,
            run,
            matched,
            stderr,
            ..
        } = lines;
        if let Some(r) = ring.as_mut().filter(|_| run.2 > 0) {
            if run.1 - run.0 >= CHUNK_MIN {
                // The ring keeps this read buffer; reading goes on in one
                // it gives back.
                let spare = r.take_spare(self.scratch.len());
                let buf = std::mem::replace(&mut self.scratch, spare);
                r.push_chunk(label, stderr, buf, run.0..run.1, run.2);
            } else {
                r.push_block(label, stderr, &data[run.0..run.1], run.2);
            }
        }
        if matched {
            // `ready = { log }`: handled after the reads of this turn.
            if let Some(iid) = child.instance {
                child.ready_log = None;
                self.probes.log_ready.push(iid);
            }
        }
        if let Some(client) = attached {
            if n == 0 {
                self.end_attach(client);
            } else {
                self.send_to_attached(client, n);
            }
        }
        if n == 0 {
            self.close_pipe(id, stream);
        }
        more
    }

    /// Write the log files' buffers, and report the lines files dropped
    /// while they could not be written.
    pub(super) fn flush_logs(&mut self) {
        self.logs.flush(Instant::now());
        let reports = self.logs.take_reports();
        self.report_dropped(reports);
    }

    pub(super) fn report_dropped(&mut self, reports: Vec<Dropped>) {
        for d in reports {
            log::warn!(
                "log file {}: {} lines of {} dropped while it could not be written",
                d.file.display(),
                d.lines,
                d.label
            );
            self.events.emit(&Event::LogDropped {
                label: d.label,
                file: d.file.display().to_string(),
                lines: d.lines,
            });
        }
    }

    pub(super) fn close_pipe(&mut self, id: ChildId, stream: Stream) {
        let Some(child) = self.children.get_mut(&id) else {
            return;
        };
        if let Some(pipe) = child.pipes[stream as usize].take() {
            let raw = pipe.fd.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        }
        if !child.has_pipes() && !child.state.leader_alive() {
            self.children.remove(&id);
        }
        self.resources_freed();
    }

    /// A message of brood's own, after the log lines queued before it.
    pub(super) fn say(&mut self, text: &str) {
        let queued = logging::take_queued();
        let sink = self.err_sink();
        sink.push_raw(&queued);
        sink.push_raw(text.as_bytes());
        if !text.ends_with('\n') {
            sink.push_raw(b"\n");
        }
    }

    /// Give up on output that cannot be written (a reader that stopped
    /// reading): close the stuck sinks and every pipe. Only on a third
    /// request.
    pub(super) fn abandon_output(&mut self) {
        // Only a stream that is stuck: brood's summary still goes to a
        // stderr that is being read.
        for sink in [&mut self.stdout, &mut self.stderr] {
            if sink.pending() > 0 {
                sink.close();
            }
        }
        let ids: Vec<ChildId> = self.children.keys().copied().collect();
        for id in ids {
            self.close_pipe(id, Stream::Stdout);
            self.close_pipe(id, Stream::Stderr);
        }
        let now = Instant::now();
        if let Some(sd) = self.shutdown.as_mut() {
            sd.drain_until = Some(now);
        }
        self.timers.schedule(Timer::Drain, now);
    }

    /// Read what is left in every pipe whose sink has room, then close it.
    /// False when a full sink keeps some open (nothing is dropped).
    pub(super) fn force_close_pipes(&mut self) -> bool {
        let ids: Vec<ChildId> = self.children.keys().copied().collect();
        let mut all = true;
        for id in ids {
            for stream in [Stream::Stdout, Stream::Stderr] {
                if !self.sink(stream).has_room() {
                    all = false;
                    continue;
                }
                while self
                    .children
                    .get(&id)
                    .is_some_and(|c| c.pipes[stream as usize].is_some())
                {
                    if !self.read_pipe(id, stream, false) {
                        self.close_pipe(id, stream);
                    }
                }
            }
        }
        all
    }
}
