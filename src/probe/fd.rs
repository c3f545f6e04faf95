//! `ready = { fd = N }`: s6's notification-fd.
//!
//! The instance gets the write end of a pipe as fd N; it writes a newline
//! there when it is ready (and usually closes it). brood keeps the read
//! end, non-blocking and close-on-exec, in its poll. EOF before a newline
//! means the program closed the fd without ever being ready.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;

use super::net::Outcome;
use crate::spawn::ExtraFd;

/// The most bytes brood reads before the newline: a program that writes
/// more has mistaken the fd for something else.
pub const MAX_BEFORE_NEWLINE: usize = 4096;

/// brood's end of a notification pipe: a mio source (readable events).
#[derive(Debug)]
pub struct ReadyPipe {
    fd: OwnedFd,
    target: RawFd,
    seen: usize,
}

/// Make the pipe for an instance that is told to write to fd `target`:
/// brood's reader, and the write end to pass to
/// [`crate::spawn::spawn_with`] (which closes brood's copy once the child
/// has it). Both ends are close-on-exec: only the child's `target` copy
/// crosses exec.
pub fn ready_pipe(target: RawFd) -> io::Result<(ReadyPipe, ExtraFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(io::Error::from)?;
    // pipe2 made both ends non-blocking; the child's end should block like
    // any pipe a program is handed (the two ends are separate open files).
    nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty())).map_err(io::Error::from)?;
    Ok((
        ReadyPipe {
            fd: r,
            target,
            seen: 0,
        },
        ExtraFd { fd: w, target },
    ))
}

impl ReadyPipe {
    /// Read what is there (until the pipe would block, as edge-triggered
    /// polling requires). `Some(Pass)` at the first newline;
    /// `Some(Fail)` at EOF without one, or after [`MAX_BEFORE_NEWLINE`]
    /// bytes without one; `None`, wait for the next event.
    pub fn on_readable(&mut self) -> Option<Outcome> {
        let mut buf = [0u8; 512];
        loop {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) => {
                    return Some(Outcome::Fail(format!(
                        "closed fd {} without writing a newline",
                        self.target
                    )))
                }
                Ok(n) if buf[..n].contains(&b'\n') => return Some(Outcome::Pass),
                Ok(n) => {
                    self.seen += n;
                    if self.seen > MAX_BEFORE_NEWLINE {
                        return Some(Outcome::Fail(format!(
                            "wrote more than {MAX_BEFORE_NEWLINE} bytes to fd {} without a newline",
                            self.target
                        )));
                    }
                }
                Err(Errno::EAGAIN) => return None,
                Err(Errno::EINTR) => {}
                Err(e) => return Some(Outcome::Fail(format!("reading fd {}: {}", self.target, e.desc()))),
            }
        }
    }

    /// The child's fd number this pipe stands for.
    pub fn target(&self) -> RawFd {
        self.target
    }
}

impl mio::event::Source for ReadyPipe {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).register(registry, token, interests)
    }
    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).reregister(registry, token, interests)
    }
    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        mio::unix::SourceFd(&self.fd.as_raw_fd()).deregister(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(fd: &OwnedFd, bytes: &[u8]) {
        assert_eq!(nix::unistd::write(fd, bytes).unwrap(), bytes.len());
    }

    #[test]
    fn a_newline_is_ready() {
        let (mut r, w) = ready_pipe(3).unwrap();
        assert_eq!(r.on_readable(), None, "nothing written yet");
        write(&w.fd, b"starting");
        assert_eq!(r.on_readable(), None);
        write(&w.fd, b" up\n");
        assert_eq!(r.on_readable(), Some(Outcome::Pass));
    }

    #[test]
    fn eof_without_a_newline_fails() {
        let (mut r, w) = ready_pipe(5).unwrap();
        write(&w.fd, b"no newline");
        drop(w);
        assert_eq!(
            r.on_readable(),
            Some(Outcome::Fail("closed fd 5 without writing a newline".into()))
        );
    }

    #[test]
    fn too_much_without_a_newline_fails() {
        let (mut r, w) = ready_pipe(3).unwrap();
        write(&w.fd, &[b'x'; MAX_BEFORE_NEWLINE + 1]);
        assert!(matches!(r.on_readable(), Some(Outcome::Fail(why)) if why.contains("without a newline")));
    }

    #[test]
    fn both_ends_are_close_on_exec_and_only_the_reader_non_blocking() {
        let (r, w) = ready_pipe(3).unwrap();
        for fd in [r.fd.as_raw_fd(), w.fd.as_raw_fd()] {
            // SAFETY: F_GETFD on an fd this test owns.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
        // SAFETY: as above, F_GETFL.
        let (rf, wf) = unsafe {
            (
                libc::fcntl(r.fd.as_raw_fd(), libc::F_GETFL),
                libc::fcntl(w.fd.as_raw_fd(), libc::F_GETFL),
            )
        };
        assert_ne!(rf & libc::O_NONBLOCK, 0);
        assert_eq!(wf & libc::O_NONBLOCK, 0);
    }
}
