//! `brood ctl attach LABEL`: the caller's terminal on an instance's
//! pseudo-terminal, until the detach key.
//!
//! A plain blocking client (it is not brood's loop): `poll` on stdin, the
//! socket and a self-pipe that signals write to. The caller's terminal is
//! put in raw mode, so every key (Ctrl-C and Ctrl-Z included) goes to the
//! program, except [`DETACH_KEY`]; its mode is restored on every way out:
//! detach, the end of stdin, the program's end, an error, and SIGTERM,
//! SIGHUP, SIGINT or SIGQUIT sent to the client. The window size is sent
//! at the start and again on each SIGWINCH.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, SetArg, Termios};

use crate::control::{attach_frame, ATTACH_INPUT, ATTACH_WINDOW};
use crate::error::Error;

/// Ctrl-]: detaches, as in telnet and `docker attach`'s habit.
pub const DETACH_KEY: u8 = 0x1d;

/// Keys queued for brood before the client stops reading its stdin.
const MAX_QUEUED: usize = 64 * 1024;

/// The terminal's mode before raw mode, put back when this is dropped.
struct RawMode<'a> {
    fd: BorrowedFd<'a>,
    saved: Termios,
}

impl<'a> RawMode<'a> {
    /// Raw mode on `fd` if it is a terminal; None if it is not one.
    fn enter(fd: BorrowedFd<'a>) -> Result<Option<RawMode<'a>>, Error> {
        let Ok(saved) = termios::tcgetattr(fd) else {
            return Ok(None);
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw)
            .map_err(|e| Error::runtime(format!("cannot put the terminal in raw mode: {e}")))?;
        Ok(Some(RawMode { fd, saved }))
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        // TCSADRAIN: what was written in raw mode is shown in raw mode.
        let _ = termios::tcsetattr(self.fd, SetArg::TCSADRAIN, &self.saved);
    }
}

/// The caller's window size, from stdin or stdout, if either is a terminal.
fn window_size() -> Option<(u16, u16)> {
    for fd in [0, 1] {
        // SAFETY: winsize is plain data; TIOCGWINSZ fills it or fails.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: `ws` is valid for the write TIOCGWINSZ makes, if any.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        if rc == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

fn window_frame() -> Option<Vec<u8>> {
    let (rows, cols) = window_size()?;
    let mut size = rows.to_be_bytes().to_vec();
    size.extend_from_slice(&cols.to_be_bytes());
    Some(attach_frame(ATTACH_WINDOW, &size))
}

/// Why the session ended.
enum End {
    Detached,
    StdinClosed,
    TerminalClosed,
    Signal,
}

/// Signals that end the session, and SIGWINCH, as flags, plus a socket
/// they write to so that `poll` wakes.
struct Signals {
    stop: Arc<AtomicBool>,
    winch: Arc<AtomicBool>,
    wake: UnixStream,
}

impl Signals {
    fn register() -> io::Result<Signals> {
        use signal_hook::consts::signal::*;
        let (wake, wake_w) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let winch = Arc::new(AtomicBool::new(false));
        for sig in [SIGTERM, SIGHUP, SIGINT, SIGQUIT] {
            signal_hook::flag::register(sig, stop.clone())?;
            signal_hook::low_level::pipe::register(sig, wake_w.try_clone()?)?;
        }
        signal_hook::flag::register(SIGWINCH, winch.clone())?;
        signal_hook::low_level::pipe::register(SIGWINCH, wake_w)?;
        Ok(Signals { stop, winch, wake })
    }

    fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// Run the attached session on `stream` (the reply line already read;
/// `early` is what came after it). Returns the exit code.
pub fn run(stream: &UnixStream, early: &[u8], label: &str, pid: &serde_json::Value) -> Result<i32, Error> {
    let signals = Signals::register().map_err(|e| Error::io("cannot handle signals", e))?;
    stream
        .set_nonblocking(true)
        .map_err(|e| Error::io("cannot set up the connection", e))?;
    eprintln!("brood ctl: attached to {label} (pid {pid}); detach with Ctrl-]");
    let stdin = io::stdin();
    let raw = RawMode::enter(stdin.as_fd())?;
    let outcome = session(stream, early, &signals);
    if raw.is_some() {
        drop(raw);
        // The program's last line may have no end (a prompt).
        eprintln!();
    }
    match outcome {
        Ok(End::Detached) => eprintln!("brood ctl: detached from {label}; it keeps running"),
        Ok(End::StdinClosed) => eprintln!("brood ctl: end of input: detached from {label}; it keeps running"),
        Ok(End::TerminalClosed) => {
            eprintln!("brood ctl: {label}'s terminal closed (the program ended, or brood stopped)")
        }
        Ok(End::Signal) => {
            eprintln!("brood ctl: stopped by a signal: detached from {label}; it keeps running");
            return Ok(1);
        }
        Err(e) => return Err(e),
    }
    Ok(0)
}

/// Shuttle bytes until one side ends.
fn session(stream: &UnixStream, early: &[u8], signals: &Signals) -> Result<End, Error> {
    let lost = |e: io::Error| Error::runtime(format!("the connection to brood failed: {e}"));
    let mut out = io::stdout().lock();
    let mut show = |bytes: &[u8]| out.write_all(bytes).and_then(|()| out.flush());
    if show(early).is_err() {
        return Ok(End::StdinClosed);
    }
    let mut queued: Vec<u8> = window_frame().unwrap_or_default();
    let mut stdin_open = true;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if signals.stop.load(Ordering::SeqCst) {
            return Ok(End::Signal);
        }
        if signals.winch.swap(false, Ordering::SeqCst) {
            queued.extend(window_frame().unwrap_or_default());
        }
        while !queued.is_empty() {
            match (&*stream).write(&queued) {
                Ok(n) => {
                    queued.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(End::TerminalClosed),
                Err(e) => return Err(lost(e)),
            }
        }
        let read_stdin = stdin_open && queued.len() < MAX_QUEUED;
        let sock_events = if queued.is_empty() {
            PollFlags::POLLIN
        } else {
            PollFlags::POLLIN | PollFlags::POLLOUT
        };
        let stdin = io::stdin();
        let mut fds = vec![
            PollFd::new(stream.as_fd(), sock_events),
            PollFd::new(signals.wake.as_fd(), PollFlags::POLLIN),
        ];
        if read_stdin {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::runtime(format!("poll failed: {e}"))),
        }
        let ready = |fd: &PollFd| {
            fd.revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR))
        };
        let (sock_ready, wake_ready) = (ready(&fds[0]), ready(&fds[1]));
        let stdin_ready = fds.get(2).is_some_and(ready);
        drop(fds);
        if wake_ready {
            signals.drain();
        }
        if sock_ready {
            match (&*stream).read(&mut buf) {
                Ok(0) => return Ok(End::TerminalClosed),
                Ok(n) => {
                    if show(&buf[..n]).is_err() {
                        // Our own output is gone: nothing to attach to.
                        return Ok(End::StdinClosed);
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                Err(e) => return Err(lost(e)),
            }
        }
        if stdin_ready {
            // SAFETY: `buf` is valid for writes of 4096 bytes (it has 64 KiB).
            let n = unsafe { libc::read(io::stdin().as_raw_fd(), buf.as_mut_ptr().cast(), 4096) };
            match n {
                0 => stdin_open = false,
                n if n > 0 => {
                    let keys = &buf[..n as usize];
                    if let Some(at) = keys.iter().position(|&b| b == DETACH_KEY) {
                        queued.extend(attach_frame(ATTACH_INPUT, &keys[..at]));
                        send_rest(stream, &queued);
                        return Ok(End::Detached);
                    }
                    queued.extend(attach_frame(ATTACH_INPUT, keys));
                }
                _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                _ => stdin_open = false,
            }
            if !stdin_open {
                send_rest(stream, &queued);
                return Ok(End::StdinClosed);
            }
        }
    }
}

/// The keys typed before the detach key (or the end of input) still go:
/// best effort, bounded by the socket buffer.
fn send_rest(stream: &UnixStream, queued: &[u8]) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
    let _ = (&*stream).write_all(queued);
}
