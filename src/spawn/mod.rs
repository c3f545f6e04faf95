//! fork + exec, with the error pipe and the signal mask handled.
//!
//! The fork is `clone(CLONE_VM | CLONE_VFORK)`, as glibc's posix_spawn does
//! it: the child borrows brood's memory instead of copying its page tables,
//! and brood sleeps until the child has exec'd or exited. That makes a spawn
//! cheaper (no page-table copy, no copy-on-write faults in brood afterwards)
//! and means brood never runs while a half-made child shares its memory.
//! Everything the child reads was prepared before; the child only makes
//! syscalls (`child.rs`).
//!
//! [`spawn`] returns the child's pid and its output pipes, or a
//! [`SpawnError`] that says at which stage it failed. It never waits for a
//! child: when exec fails the child `_exit`s with 127 and the reaper collects
//! it like any other.

pub mod child;
pub mod plan;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::Pid;

use child::{ChildSetup, Stage, REPORT_FOOTER, REPORT_LEN};
use plan::{CArray, Image};

/// Where the child's stdout and stderr go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdio {
    /// Through pipes that brood reads.
    Capture,
    /// brood's own stdout and stderr.
    Inherit,
    /// /dev/null (brood's own probes: their output is nobody's).
    Null,
}

/// Settings that are the same for every spawn of a run.
pub struct SpawnContext {
    /// Signals the child sets back to SIG_DFL before it unblocks signals.
    pub reset_signals: Vec<libc::c_int>,
    /// Signals the child sets to SIG_IGN (init mode: the ones brood's parent
    /// left ignored and brood caught for forwarding). Empty in spawn and run.
    pub ignore_signals: Vec<libc::c_int>,
    /// The signal mask the child execs with: None for an empty mask (spawn
    /// and run), or the mask brood inherited (init mode, a transparent
    /// wrapper).
    pub child_mask: Option<libc::sigset_t>,
    pub pdeathsig: Option<libc::c_int>,
    pub parent_pid: libc::pid_t,
    pub max_fd: libc::c_int,
    /// Opened once: the children's stdin, unless their image asks for a
    /// pipe (`brood run`) or init mode passes its own on.
    pub dev_null: Option<OwnedFd>,
    /// The stack the child runs on until it execs. One is enough: with
    /// CLONE_VFORK brood waits until the child is done with it.
    /// Written by the child through a raw pointer, hence the UnsafeCell.
    child_stack: std::cell::UnsafeCell<Box<[u128]>>,
    /// Give the child brood's stdin instead of /dev/null (init mode).
    pub inherit_stdin: bool,
    pub new_group: bool,
    /// Give each child the foreground of this terminal (init mode).
    pub foreground_tty: Option<RawFd>,
    /// The RLIMIT_NOFILE brood started with, when it raised its own.
    pub original_nofile: Option<libc::rlimit>,
}

impl SpawnContext {
    /// `pdeathsig`: `None` for no parent-death signal; `Some(sig)` for one.
    pub fn new(
        reset_signals: Vec<libc::c_int>,
        pdeathsig: Option<libc::c_int>,
    ) -> std::io::Result<SpawnContext> {
        let dev_null = nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(std::io::Error::from)?;
        let original_nofile = raise_nofile_limit();
        let max_fd = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft.min(1 << 20) as libc::c_int)
            .unwrap_or(1024);
        Ok(SpawnContext {
            reset_signals,
            ignore_signals: Vec::new(),
            child_mask: None,
            pdeathsig,
            parent_pid: std::process::id() as libc::pid_t,
            max_fd,
            dev_null: Some(dev_null),
            child_stack: std::cell::UnsafeCell::new(vec![0u128; CHILD_STACK_BYTES / 16].into_boxed_slice()),
            inherit_stdin: false,
            new_group: true,
            foreground_tty: None,
            original_nofile,
        })
    }
}

const CHILD_STACK_BYTES: usize = 256 * 1024;

extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildSetup` that `spawn` keeps alive on its
    // stack while it is suspended in clone (CLONE_VFORK).
    unsafe { child::exec_child(&*(arg as *const ChildSetup)) }
}

/// One more fd for the child beyond 0, 1 and 2 (s6's notification-fd,
/// `ready = { fd = N }`): `fd` becomes the child's fd `target`, open across
/// exec. brood's own copy is closed when the spawn returns, so the reader
/// sees EOF once the child (and whoever inherited it) has closed it.
#[derive(Debug)]
pub struct ExtraFd {
    pub fd: OwnedFd,
    /// The child's fd number: 3 or more (0, 1 and 2 are stdio).
    pub target: RawFd,
}

pub struct Spawned {
    pub pid: Pid,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// The write end of the child's stdin pipe ([`plan::Attrs::stdin_pipe`]):
    /// never written; the child reads EOF once brood drops it.
    pub stdin: Option<OwnedFd>,
    /// `stdout` is the master of the child's pseudo-terminal
    /// ([`plan::Attrs::tty`]), non-blocking: its output and stderr in one
    /// stream, and where its input is written. No `stderr`, no `stdin`.
    pub tty: bool,
}

#[derive(Debug)]
pub enum SpawnError {
    /// Making the pipes, or fork itself, failed: no child exists.
    Fork(Errno),
    /// The child could not get to exec; it has `_exit`ed (or is about to)
    /// and must still be reaped.
    Exec { pid: Pid, stage: Stage, errno: Errno },
}

impl SpawnError {
    pub fn errno(&self) -> Errno {
        match self {
            SpawnError::Fork(e) => *e,
            SpawnError::Exec { errno, .. } => *errno,
        }
    }

    pub fn stage(&self) -> &'static str {
        match self {
            SpawnError::Fork(_) => "fork",
            SpawnError::Exec { .. } => "exec",
        }
    }

    /// The one-line message for the user.
    pub fn describe(&self, image: &Image) -> String {
        let prog = image.display_name();
        let reason = std::io::Error::from_raw_os_error(self.errno() as i32);
        match self {
            SpawnError::Fork(_) => format!("cannot fork for '{prog}': {reason}"),
            SpawnError::Exec {
                stage: Stage::Chdir, ..
            } => {
                let dir = image
                    .cwd
                    .as_ref()
                    .map(|c| c.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!("cannot exec '{prog}': cannot enter directory '{dir}': {reason}")
            }
            SpawnError::Exec {
                stage: Stage::Terminal,
                ..
            } => format!("cannot exec '{prog}': cannot take its pseudo-terminal: {reason}"),
            SpawnError::Exec {
                stage: Stage::Setup, ..
            } => {
                format!("cannot exec '{prog}': child setup failed: {reason}")
            }
            SpawnError::Exec { stage, .. }
                if matches!(
                    stage,
                    Stage::Groups | Stage::Gid | Stage::Uid | Stage::Nice | Stage::Rlimit(_)
                ) =>
            {
                format!(
                    "cannot exec '{prog}': {}: {reason}",
                    attr_step(*stage, &image.attrs)
                )
            }
            SpawnError::Exec {
                stage: Stage::Report { why },
                ..
            } => {
                format!("cannot exec '{prog}': unreadable exec-error report ({why}), child killed: {reason}")
            }
            SpawnError::Exec { .. } => format!("cannot exec '{prog}': {reason}"),
        }
    }
}

/// The attribute step a child failed at, for the message.
fn attr_step(stage: Stage, attrs: &plan::Attrs) -> String {
    let creds = attrs.credentials.as_ref();
    match stage {
        Stage::Groups => format!(
            "cannot set the supplementary groups {:?}",
            creds.map(|c| c.groups.clone()).unwrap_or_default()
        ),
        Stage::Gid => format!("cannot switch to gid {}", creds.map_or(0, |c| c.gid)),
        Stage::Uid => format!("cannot switch to uid {}", creds.and_then(|c| c.uid).unwrap_or(0)),
        Stage::Nice => format!("cannot set nice {}", attrs.nice.unwrap_or(0)),
        Stage::Rlimit(r) => format!("cannot set rlimits.{}", crate::config::rlimit_name(r)),
        _ => "child setup failed".to_string(),
    }
}

/// What the parent made of the report buffer right after the clone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecReport {
    /// Nothing written: the child passed exec's point of no return.
    Execed,
    /// A well-formed failure report from the child.
    Failed { stage: Stage, errno: Errno },
    /// Bytes that are no report (a child killed while it stored one):
    /// brood cannot tell whether the exec happened.
    Unreadable { why: &'static str, errno: Errno },
}

/// Decode the report buffer as the child left it: untouched (all zero: the
/// exec happened) or one whole report. Anything else is reported as
/// unreadable, never taken for success.
pub fn decode_report(msg: &[u8; REPORT_LEN]) -> ExecReport {
    let unreadable = |why| ExecReport::Unreadable {
        why,
        errno: Errno::EPROTO,
    };
    if *msg == [0u8; REPORT_LEN] {
        return ExecReport::Execed;
    }
    if msg[8..] != REPORT_FOOTER {
        return unreadable("no check word");
    }
    let errno = i32::from_be_bytes([msg[0], msg[1], msg[2], msg[3]]);
    let stage = u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]);
    let Some(stage) = Stage::from_wire(stage) else {
        return unreadable("unknown stage");
    };
    if errno <= 0 {
        return unreadable("no errno");
    }
    ExecReport::Failed {
        stage,
        errno: Errno::from_raw(errno),
    }
}

fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd), Errno> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

/// Only ever called on brood's own read ends, never on a shared fd.
/// O_NONBLOCK on a pipe end brood just made: one call, since such an end
/// has no other status flag to keep (F_SETFL ignores the access mode).
fn set_nonblocking(fd: &OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let _ = fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
}

/// The window a new pseudo-terminal starts with: brood's own terminal's
/// size if it has one, else 80x24.
fn initial_window() -> libc::winsize {
    for fd in [1, 0, 2] {
        // SAFETY: winsize is plain data; TIOCGWINSZ writes one into it or
        // fails (ENOTTY) on what is no terminal.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: `ws` is valid for the write TIOCGWINSZ makes, if any.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        if rc == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            return ws;
        }
    }
    libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// A pseudo-terminal for a `tty = true` child: the master stays brood's
/// (close-on-exec, non-blocking, read like a pipe), the slave goes to the
/// child, opened O_NOCTTY so that it never becomes brood's own terminal.
pub fn open_pty() -> Result<(OwnedFd, OwnedFd), Errno> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
    let master =
        nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    // posix_openpt may not pass O_CLOEXEC on; brood is single-threaded
    // and forks nothing before this, so setting it now closes no race.
    fcntl(&master, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let ws = initial_window();
    // SAFETY: `ws` is a valid winsize the call only reads.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(Errno::last());
    }
    Ok((master.into(), slave))
}

/// Fork one child and exec `image` with `argv` in it.
pub fn spawn(ctx: &SpawnContext, image: &Image, argv: &CArray, stdio: Stdio) -> Result<Spawned, SpawnError> {
    spawn_with(ctx, image, argv, stdio, None)
}

/// [`spawn`], and give the child `extra` as one more open fd.
pub fn spawn_with(
    ctx: &SpawnContext,
    image: &Image,
    argv: &CArray,
    stdio: Stdio,
    extra: Option<ExtraFd>,
) -> Result<Spawned, SpawnError> {
    if extra.as_ref().is_some_and(|e| e.target < 3) {
        return Err(SpawnError::Fork(Errno::EBADF));
    }
    // With --inherit the child is on brood's own terminal (if any) instead.
    let pty = if image.attrs.tty && stdio == Stdio::Capture && !ctx.inherit_stdin {
        Some(open_pty().map_err(SpawnError::Fork)?)
    } else {
        None
    };
    let (out, err) = match stdio {
        Stdio::Capture if pty.is_some() => (None, None),
        Stdio::Capture => (
            Some(pipe_cloexec().map_err(SpawnError::Fork)?),
            Some(pipe_cloexec().map_err(SpawnError::Fork)?),
        ),
        Stdio::Inherit | Stdio::Null => (None, None),
    };
    let null_out = match stdio {
        Stdio::Null => ctx.dev_null.as_ref().map(|f| f.as_raw_fd()),
        _ => None,
    };
    // Where a failing child leaves its report (see child::report): zeroed,
    // so that nothing written means the exec happened.
    let mut report_slot = [0u8; REPORT_LEN];

    // A pipe brood holds open and never writes: the child's reads block
    // (watchers that quit at EOF keep running) until brood drops the write
    // end. Both ends are close-on-exec, so no other child inherits them;
    // the read end reaches this child only through the dup2 onto 0.
    let stdin_pipe = if image.attrs.stdin_pipe && !ctx.inherit_stdin && pty.is_none() {
        Some(pipe_cloexec().map_err(SpawnError::Fork)?)
    } else {
        None
    };
    let stdin_fd = if ctx.inherit_stdin {
        0
    } else if let Some((r, _)) = &stdin_pipe {
        r.as_raw_fd()
    } else {
        ctx.dev_null.as_ref().map_or(-1, |f| f.as_raw_fd())
    };
    let creds = image.attrs.credentials.as_ref();
    let tty = pty.as_ref().map_or(-1, |(_, slave)| slave.as_raw_fd());
    let stdio = if tty >= 0 {
        [(tty, 0), (tty, 1), (tty, 2)]
    } else {
        [
            (stdin_fd, 0),
            (
                out.as_ref()
                    .map_or(null_out.unwrap_or(-1), |(_, w)| w.as_raw_fd()),
                1,
            ),
            (
                err.as_ref()
                    .map_or(null_out.unwrap_or(-1), |(_, w)| w.as_raw_fd()),
                2,
            ),
        ]
    };
    let setup = ChildSetup {
        paths: image.paths.ptrs(),
        argv: argv.as_ptr(),
        envp: image.envp.as_ptr(),
        cwd: image.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        stdio,
        report: report_slot.as_mut_ptr(),
        reset_signals: &ctx.reset_signals,
        ignore_signals: &ctx.ignore_signals,
        mask: ctx
            .child_mask
            .as_ref()
            .map_or(std::ptr::null(), |m| m as *const libc::sigset_t),
        pdeathsig: ctx.pdeathsig.unwrap_or(0),
        parent_pid: ctx.parent_pid,
        new_group: ctx.new_group,
        tty,
        foreground_tty: ctx.foreground_tty.unwrap_or(-1),
        max_fd: ctx.max_fd,
        nofile: ctx.original_nofile,
        rlimits: &image.attrs.rlimits,
        nice: image.attrs.nice,
        umask: image.attrs.umask,
        ids: creds.map(|c| (&c.groups[..], c.gid, c.uid)),
        extra_fd: extra.as_ref().map_or((-1, -1), |e| (e.fd.as_raw_fd(), e.target)),
    };

    // Block every signal across fork, so that none runs brood's handler in
    // the child before it has reset its dispositions.
    // SAFETY: sigset_t is a plain bit array; all-zero is the empty set.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut saved: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: brood is single-threaded and the previous child, the only
    // other user of this stack, is past exec or exit (CLONE_VFORK returned),
    // so this is the only reference; `add(len)` is one past the end of the
    // same allocation, which is allowed.
    let stack_top = unsafe {
        let stack = &mut *ctx.child_stack.get();
        // The stack grows down; u128 elements keep the top 16-byte aligned.
        stack.as_mut_ptr().add(stack.len()) as *mut libc::c_void
    };
    // SAFETY: the sigsets are locals; clone gets a valid entry point, the
    // top of a 256 KiB stack no one else uses, and a pointer to `setup`,
    // which outlives the call: with CLONE_VFORK brood is suspended until the
    // child has exec'd or exited, so the child's borrow of brood's memory
    // (CLONE_VM) ends before `setup` or the stack can change. The child
    // runs only child.rs, which writes nothing of brood's but errno.
    let pid = unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut saved);
        let pid = libc::clone(
            child_entry,
            stack_top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &setup as *const ChildSetup as *mut libc::c_void,
        );
        let fork_errno = Errno::last();
        libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut());
        if pid < 0 {
            return Err(SpawnError::Fork(fork_errno));
        }
        Pid::from_raw(pid)
    };
    let stdin_w = stdin_pipe.map(|(_r, w)| w);
    // brood's copy of the extra fd: the child has its own now.
    drop(extra);
    // brood must not hold the slave: the master reads EIO (EOF) only once
    // every slave fd is closed, that is once the child's session is gone.
    let master = pty.map(|(master, _slave)| master);
    // No setpgid from here as well (the classic guard against signalling
    // a group that does not exist yet): clone returned, so the child has
    // made its group before its exec, or has exited.
    let (out_r, err_r_pipe) = match (out, err) {
        (Some((or, _ow)), Some((er, _ew))) => (Some(or), Some(er)),
        _ => (None, None),
    };

    // With CLONE_VFORK, clone returns once the child has passed exec's
    // point of no return or has exited. A failing child stores its report
    // before it exits, so it is here now; a child past the point of no
    // return stores nothing. So an untouched buffer already means success:
    // brood need not wait for anything, and the kernel's close-on-exec sweep
    // of the child's fds (thousands, with thousands of children) runs on
    // another core while brood spawns the next one.
    // SAFETY: the buffer is a live local; the child that shared it is past
    // exec or gone, so nothing writes it any more. Volatile: it was written
    // behind the compiler's back.
    let written = unsafe { std::ptr::read_volatile(&report_slot) };
    let report = decode_report(&written);
    match report {
        ExecReport::Execed => {}
        ExecReport::Failed { stage, errno } => return Err(SpawnError::Exec { pid, stage, errno }),
        ExecReport::Unreadable { why, errno } => {
            // Whether it exec'd is unknown: a child brood cannot account
            // for must not run unsupervised. The pid (and the group it
            // leads) is brood's until reaped, so it cannot be a stranger's.
            let target = if ctx.new_group {
                -pid.as_raw()
            } else {
                pid.as_raw()
            };
            // SAFETY: kill takes no pointers; the target is our unreaped child.
            unsafe { libc::kill(target, libc::SIGKILL) };
            return Err(SpawnError::Exec {
                pid,
                stage: Stage::Report { why },
                errno,
            });
        }
    }
    for fd in out_r.iter().chain(err_r_pipe.iter()) {
        set_nonblocking(fd);
    }
    let tty = master.is_some();
    Ok(Spawned {
        pid,
        stdout: master.or(out_r),
        stderr: err_r_pipe,
        stdin: stdin_w,
        tty,
    })
}

/// Replace brood itself with `image` and `argv` (`brood exec`): no fork,
/// so the command keeps brood's pid, terminal, process group, signal mask
/// and ignored signals, and its parent sees its own exit status. Only
/// SIGPIPE goes back to SIG_DFL: Rust ignored it at start-up, the user did
/// not. Returns only when exec failed: the error, with brood's pid.
pub fn replace_process(image: &Image, argv: &CArray) -> SpawnError {
    let pid = nix::unistd::getpid();
    // SAFETY: SIG_DFL installs no handler code; the process is about to
    // become the command.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    if let Some(dir) = &image.cwd {
        // SAFETY: a NUL-terminated path that outlives the call.
        if unsafe { libc::chdir(dir.as_ptr()) } != 0 {
            return SpawnError::Exec {
                pid,
                stage: Stage::Chdir,
                errno: Errno::last(),
            };
        }
    }
    // SAFETY: NULL-terminated arrays of NUL-terminated strings built
    // beforehand, alive for the call; on success it does not return.
    let errno = unsafe { child::execve_candidates(image.paths.ptrs(), argv.as_ptr(), image.envp.as_ptr()) };
    SpawnError::Exec {
        pid,
        stage: Stage::Exec,
        errno: Errno::from_raw(errno),
    }
}

/// Raise brood's soft RLIMIT_NOFILE to the hard limit (two pipes per child
/// add up fast). Returns the original limit, for the children, when it
/// changed.
fn raise_nofile_limit() -> Option<libc::rlimit> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return None;
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok()?;
    Some(libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    })
}

/// Ensure fds 0, 1 and 2 are open, so that no pipe brood makes lands on
/// them (a child would then get its pipe on the wrong number).
pub fn ensure_std_fds() {
    for fd in 0..3 {
        // The fd may be closed, so it cannot be borrowed as a BorrowedFd.
        // SAFETY: fcntl(F_GETFD) takes no pointer; a closed fd gives EBADF.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            let flags = if fd == 0 { libc::O_RDONLY } else { libc::O_WRONLY };
            // SAFETY: a NUL-terminated literal.
            let null = unsafe { libc::open(c"/dev/null".as_ptr(), flags) };
            if null >= 0 && null != fd {
                // SAFETY: `null` was opened just above and is closed once,
                // here; `fd` was closed, so dup2 replaces nothing of anyone's.
                unsafe {
                    libc::dup2(null, fd);
                    libc::close(null);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use child::encode_report;

    fn unreadable(report: ExecReport) -> &'static str {
        match report {
            ExecReport::Unreadable { why, errno } => {
                assert_eq!(errno, Errno::EPROTO);
                why
            }
            other => panic!("expected an unreadable report, got {other:?}"),
        }
    }

    #[test]
    fn an_untouched_buffer_means_the_exec_happened() {
        assert_eq!(decode_report(&[0; REPORT_LEN]), ExecReport::Execed);
    }

    #[test]
    fn every_stage_and_errno_round_trips() {
        for stage in [
            Stage::Setup,
            Stage::Chdir,
            Stage::Exec,
            Stage::Groups,
            Stage::Gid,
            Stage::Uid,
            Stage::Nice,
            Stage::Terminal,
            Stage::Rlimit(libc::RLIMIT_NOFILE as libc::c_int),
            Stage::Rlimit(0),
        ] {
            for errno in [Errno::ENOENT, Errno::EACCES, Errno::ENOEXEC, Errno::E2BIG] {
                assert_eq!(
                    decode_report(&encode_report(stage, errno as i32)),
                    ExecReport::Failed { stage, errno }
                );
            }
        }
    }

    #[test]
    fn the_report_is_big_endian_errno_stage_then_noex() {
        let msg = encode_report(Stage::Chdir, libc::ENOENT);
        assert_eq!(msg, [0, 0, 0, 2, 0, 0, 0, 2, b'N', b'O', b'E', b'X']);
    }

    #[test]
    fn a_report_cut_short_is_an_error_not_success() {
        // A child killed while storing its report leaves a prefix of it.
        let msg = encode_report(Stage::Exec, libc::ENOENT);
        for len in 1..REPORT_LEN {
            let mut cut = [0u8; REPORT_LEN];
            cut[..len].copy_from_slice(&msg[..len]);
            if cut == [0; REPORT_LEN] {
                continue; // only zeros stored so far: nothing to tell apart
            }
            assert_eq!(unreadable(decode_report(&cut)), "no check word", "{len} bytes");
        }
    }

    #[test]
    fn a_report_without_the_check_word_is_an_error() {
        let mut msg = encode_report(Stage::Exec, libc::ENOENT);
        msg[11] = b'Y';
        assert_eq!(unreadable(decode_report(&msg)), "no check word");
        // The old native-endian 8-byte format, padded, is not a report either.
        let mut old = [0u8; REPORT_LEN];
        old[..4].copy_from_slice(&3u32.to_ne_bytes());
        old[4..8].copy_from_slice(&2u32.to_ne_bytes());
        assert_eq!(unreadable(decode_report(&old)), "no check word");
    }

    #[test]
    fn an_unknown_stage_or_a_missing_errno_is_an_error() {
        let mut msg = encode_report(Stage::Exec, libc::ENOENT);
        msg[7] = 99;
        assert_eq!(unreadable(decode_report(&msg)), "unknown stage");
        let zero = encode_report(Stage::Exec, 0);
        assert_eq!(unreadable(decode_report(&zero)), "no errno");
        // The stage the parent uses for its own failures is never accepted.
        let report = encode_report(Stage::Report { why: "" }, libc::ENOENT);
        assert_eq!(unreadable(decode_report(&report)), "unknown stage");
    }

    #[test]
    fn an_unreadable_report_names_its_cause_in_one_line() {
        let image = plan::Image::new(std::ffi::OsStr::new("/bin/true"), &[], None).expect("image");
        let err = SpawnError::Exec {
            pid: Pid::from_raw(1),
            stage: Stage::Report { why: "no check word" },
            errno: Errno::EPROTO,
        };
        let text = err.describe(&image);
        assert!(
            text.starts_with("cannot exec '/bin/true': unreadable exec-error report (no check word)"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }
}
