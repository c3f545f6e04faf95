//! `ready = { notify = true }`: systemd's sd_notify protocol.
//!
//! brood binds one datagram socket in a private directory and gives its
//! path to instances as `NOTIFY_SOCKET`. A client (`systemd-notify`,
//! libsystemd's `sd_notify`, python `sdnotify`) sends newline-separated
//! `KEY=VALUE` lines in one datagram. With `SO_PASSCRED` on, the kernel
//! attaches the sender's pid, uid and gid to every datagram: its own, or
//! ones it passed and the kernel checked (only a privileged sender may
//! name another pid; `systemd-notify` run as root names its parent). The
//! loop maps the pid to an instance by its process group ([`pgid_of`]).
//!
//! `systemd-notify` waits, by default, until the manager has processed
//! its message: it sends `BARRIER=1` with the write end of a pipe and
//! waits for the pipe's other end to see EOF. brood closes such fds once
//! the notification has been handed to the loop (when the [`Notification`]
//! is dropped), so the sender is still alive, and in its group, while the
//! loop looks it up.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use mio::net::UnixDatagram;
use nix::errno::Errno;
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixAddr};

/// systemd's own limit on a notification datagram; a longer one is
/// ignored, as systemd ignores it.
pub const MAX_DATAGRAM: usize = 4096;

/// How many datagrams one [`NotifySocket::recv_all`] call takes before it
/// lets the loop do other work: a child that floods the socket must not
/// starve the others. (The kernel queues few datagrams per socket,
/// `net.unix.max_dgram_qlen`, often 10 to 512; senders then block or get
/// EAGAIN until brood reads.)
pub const RECV_BUDGET: usize = 64;

/// The longest socket path `sockaddr_un` holds (108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Fds a client may pass along (a `BARRIER=1` sends one); more are closed
/// by the kernel.
const MAX_FDS: usize = 8;

/// One datagram, parsed. Keys brood does not act on (`BARRIER`,
/// `FDSTORE`, `EXTEND_TIMEOUT_USEC`, ...) and malformed lines are ignored.
#[derive(Debug, Default)]
pub struct Notification {
    /// The sender, as the kernel saw it (SCM_CREDENTIALS).
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// `READY=1`.
    pub ready: bool,
    /// `STATUS=...`, the last one in the datagram (lossy UTF-8).
    pub status: Option<String>,
    /// `WATCHDOG=1`: a keep-alive ping.
    pub watchdog: bool,
    /// `WATCHDOG=trigger`: the program asks to be treated as hung.
    pub watchdog_trigger: bool,
    /// `STOPPING=1`.
    pub stopping: bool,
    /// `RELOADING=1`.
    pub reloading: bool,
    /// `MAINPID=N`.
    pub main_pid: Option<i32>,
    /// `ERRNO=N`.
    pub errno: Option<i32>,
    /// Fds that came with the datagram (a barrier's pipe end): closed when
    /// the notification is dropped, which releases a waiting sender.
    fds: Vec<OwnedFd>,
}

/// Parse a datagram's payload into `n` (credentials are set apart).
pub fn parse_payload(payload: &[u8], n: &mut Notification) {
    for line in payload.split(|&b| b == b'\n') {
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (&line[..eq], &line[eq + 1..]);
        let number = || {
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<i32>().ok())
        };
        match key {
            b"READY" => n.ready |= value == b"1",
            b"STOPPING" => n.stopping |= value == b"1",
            b"RELOADING" => n.reloading |= value == b"1",
            b"WATCHDOG" if value == b"1" => n.watchdog = true,
            b"WATCHDOG" if value == b"trigger" => n.watchdog_trigger = true,
            b"STATUS" => n.status = Some(String::from_utf8_lossy(value).into_owned()),
            b"MAINPID" => n.main_pid = number().filter(|p| *p > 0).or(n.main_pid),
            b"ERRNO" => n.errno = number().filter(|e| *e >= 0).or(n.errno),
            _ => {}
        }
    }
}

/// What [`NotifySocket::recv_all`] left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// The socket is empty: wait for its next readable event.
    All,
    /// It stopped at [`RECV_BUDGET`]: more may be waiting and no new event
    /// will come for them (edge-triggered), so call it again soon (the next
    /// turn, with a zero poll timeout).
    Budget,
}

/// The notification socket: a non-blocking, close-on-exec datagram socket
/// with `SO_PASSCRED` on, registrable with mio. Its file is removed when it
/// is dropped.
#[derive(Debug)]
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    buf: Vec<u8>,
    cmsg: Vec<u8>,
}

/// Makes the socket names of one brood unique.
static SOCKET_SEQ: AtomicU32 = AtomicU32::new(0);

impl NotifySocket {
    /// Bind a new socket in `dir` (see [`runtime_dir`]); returns it and its
    /// path, the value of `NOTIFY_SOCKET`. The socket is mode 0600.
    pub fn bind(dir: &Path) -> io::Result<(NotifySocket, PathBuf)> {
        let seq = SOCKET_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("notify-{}-{seq}", std::process::id()));
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "notify socket path '{}' is longer than {MAX_SOCKET_PATH} bytes",
                    path.display()
                ),
            ));
        }
        // A socket of a brood that died with this pid: the directory is
        // brood's own, so what is there is stale.
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        let cleanup = |e: io::Error| {
            let _ = std::fs::remove_file(&path);
            e
        };
        setsockopt(&socket, sockopt::PassCred, &true)
            .map_err(io::Error::from)
            .map_err(cleanup)?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(cleanup)?;
        let cmsg = nix::cmsg_space!(libc::ucred, [RawFd; MAX_FDS]);
        Ok((
            NotifySocket {
                socket,
                path: path.clone(),
                buf: vec![0; MAX_DATAGRAM],
                cmsg,
            },
            path,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receive waiting datagrams (up to [`RECV_BUDGET`]) and hand each to
    /// `f`, in order. A datagram without credentials, or longer than
    /// [`MAX_DATAGRAM`], is dropped. Never blocks.
    pub fn recv_all(&mut self, f: impl FnMut(Notification)) -> io::Result<Drained> {
        self.recv_up_to(RECV_BUDGET, f)
    }

    /// [`NotifySocket::recv_all`] with another budget.
    pub fn recv_up_to(&mut self, budget: usize, mut f: impl FnMut(Notification)) -> io::Result<Drained> {
        for _ in 0..budget {
            match self.recv_one() {
                Ok(Some(n)) => f(n),
                Ok(None) => {}
                Err(Errno::EAGAIN) => return Ok(Drained::All),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(io::Error::from(e)),
            }
        }
        Ok(Drained::Budget)
    }

    /// One datagram: `Ok(None)` when it was dropped.
    fn recv_one(&mut self) -> Result<Option<Notification>, Errno> {
        let mut iov = [io::IoSliceMut::new(&mut self.buf)];
        let msg = recvmsg::<UnixAddr>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut self.cmsg),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC,
        )?;
        let mut n = Notification::default();
        let mut creds = false;
        for cmsg in msg.cmsgs().into_iter().flatten() {
            match cmsg {
                ControlMessageOwned::ScmCredentials(c) => {
                    (n.pid, n.uid, n.gid) = (c.pid(), c.uid(), c.gid());
                    creds = true;
                }
                ControlMessageOwned::ScmRights(fds) => {
                    // SAFETY: the kernel just installed these fds in brood
                    // (close-on-exec, MSG_CMSG_CLOEXEC); nothing else owns
                    // them, so each is wrapped exactly once and closed on
                    // drop.
                    n.fds
                        .extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
                _ => {}
            }
        }
        // With MSG_TRUNC, `bytes` is the datagram's real length.
        let len = msg.bytes;
        if !creds || n.pid <= 0 || len > MAX_DATAGRAM {
            return Ok(None);
        }
        parse_payload(&self.buf[..len], &mut n);
        Ok(Some(n))
    }
}

impl mio::event::Source for NotifySocket {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.socket.register(registry, token, interests)
    }
    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> io::Result<()> {
        self.socket.reregister(registry, token, interests)
    }
    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        self.socket.deregister(registry)
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The process group of `pid`, or None when it is gone (a sender that
/// has already exited cannot be placed).
pub fn pgid_of(pid: i32) -> Option<i32> {
    if pid <= 0 {
        return None;
    }
    nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid)))
        .ok()
        .map(|p| p.as_raw())
}

/// A private directory for brood's sockets, short enough that a socket
/// path in it fits `sun_path`: `$XDG_RUNTIME_DIR/brood` when that is set
/// and short, else `/tmp/brood-UID`. Created mode 0700; an existing one must
/// be a real directory (not a symlink), owned by brood's user, with no
/// access for anyone else, or it is refused.
pub fn runtime_dir() -> io::Result<PathBuf> {
    // notify-PID-SEQ: 7 + 10 + 1 + 10 characters at most, and a slash.
    const NAME_ROOM: usize = 29;
    let uid = nix::unistd::geteuid().as_raw();
    let mut candidates = Vec::new();
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR") {
        let xdg = PathBuf::from(xdg);
        if xdg.is_absolute() {
            candidates.push(xdg.join("brood"));
        }
    }
    candidates.push(PathBuf::from(format!("/tmp/brood-{uid}")));
    let mut last = None;
    for dir in candidates {
        if dir.as_os_str().as_bytes().len() + NAME_ROOM > MAX_SOCKET_PATH {
            continue;
        }
        match private_dir(&dir, uid) {
            Ok(()) => return Ok(dir),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no directory short enough for a socket path")))
}

fn private_dir(dir: &Path, uid: u32) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create {}: {e}", dir.display()),
            ))
        }
    }
    let meta = std::fs::symlink_metadata(dir)?;
    let refuse = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} {why}: refusing to put brood's sockets there", dir.display()),
        ))
    };
    if !meta.file_type().is_dir() {
        return refuse("is not a directory");
    }
    if meta.uid() != uid {
        return refuse("belongs to another user");
    }
    if meta.mode() & 0o077 != 0 {
        return refuse("is open to other users (mode is not 0700)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(payload: &[u8]) -> Notification {
        let mut n = Notification::default();
        parse_payload(payload, &mut n);
        n
    }

    #[test]
    fn ready_and_status() {
        let n = parsed(b"READY=1\nSTATUS=Listening on 8000\nMAINPID=42");
        assert!(n.ready);
        assert_eq!(n.status.as_deref(), Some("Listening on 8000"));
        assert_eq!(n.main_pid, Some(42));
        assert!(!n.watchdog && !n.stopping && !n.reloading);
    }

    #[test]
    fn watchdog_ping_and_trigger() {
        assert!(parsed(b"WATCHDOG=1\n").watchdog);
        let t = parsed(b"WATCHDOG=trigger");
        assert!(t.watchdog_trigger && !t.watchdog);
    }

    #[test]
    fn malformed_and_unknown_lines_are_ignored() {
        let n = parsed(b"garbage\n\nREADY=0\nREADY\nMAINPID=x\nERRNO=-1\nFDSTORE=1\nSTOPPING=1\n\xff=\xfe");
        assert!(!n.ready);
        assert!(n.stopping);
        assert_eq!(n.main_pid, None);
        assert_eq!(n.errno, None);
    }

    #[test]
    fn status_keeps_an_equals_sign_and_bad_utf8() {
        let n = parsed(b"STATUS=a=b \xff\nSTATUS=later=1");
        assert_eq!(n.status.as_deref(), Some("later=1"));
        let n = parsed(b"STATUS=a=b \xff");
        assert_eq!(n.status.as_deref(), Some("a=b \u{fffd}"));
    }

    #[test]
    fn pgid_of_self_and_of_nothing() {
        let me = std::process::id() as i32;
        assert_eq!(pgid_of(me), Some(nix::unistd::getpgrp().as_raw()));
        assert_eq!(pgid_of(0), None);
        assert_eq!(pgid_of(-1), None);
    }
}
