//! The only code that runs in the child between `fork` and `exec`.
//!
//! The child runs in brood's own memory (CLONE_VM) on a stack of its own,
//! while brood's thread is suspended in `clone` (CLONE_VFORK); brood's heap
//! and locks may be in any state, so this module obeys the
//! async-signal-safe rule strictly: it allocates nothing, takes no locks, logs nothing, runs no
//! destructor, never unwraps, never returns and never calls `exit`. Every
//! value it reads was prepared by the parent in [`ChildSetup`]; everything it
//! does is a raw syscall through `libc`.
//!
//! The calls allowed here, in the order they are made:
//! `rt_sigaction` (reset brood's handled and ignored signals to SIG_DFL;
//! in init mode, set the ones brood's parent ignored back to SIG_IGN),
//! `setpgid`, `tcsetpgrp` and `getpid` (init on a terminal),
//! or for `tty = true` `setsid` and `ioctl(TIOCSCTTY)` instead of `setpgid`
//! (a session of its own, the pty's slave as its controlling terminal),
//! `dup2`/`fcntl` (stdio), `close_range` or `fcntl(FD_CLOEXEC)` (inherited
//! fds), `dup2` or `fcntl(F_SETFD, 0)` (the extra fd, after close_range so
//! that it stays open across exec), `setrlimit` (first the RLIMIT_NOFILE brood started with, then the
//! config's `rlimits`, so a configured `nofile` wins), `setpriority`
//! (`nice`), `umask`, then the raw syscalls `setgroups`, `setgid` and
//! `setuid` (`user`, `group`), `prctl(PR_SET_PDEATHSIG)` and `getppid`
//! (parent-death race), `chdir`, `sigprocmask` (empty mask, or in init
//! mode the mask brood inherited), `execve`, and on failure `_exit(127)`
//! after leaving the [`REPORT_LEN`]-byte failure report in brood's memory.
//!
//! Why that order. Limits and nice come before the user switch: raising a
//! hard limit or lowering nice needs privileges the new user may not have
//! (systemd does the same). They come after the stdio `dup2`s, so that a
//! tiny `nofile` cannot make those fail. The ids change in the order Rust
//! std's `Command` uses, groups first and uid last, since each step needs
//! the privilege the next one drops; they are raw syscalls because glibc's
//! wrappers, in a process that ever had a second thread, broadcast the
//! change to every thread, which from here would reach brood's suspended
//! one through the shared memory. `PR_SET_PDEATHSIG` comes after them
//! because the kernel clears it when the credentials change. `chdir` comes
//! last, so a directory is entered with the new user's permissions, as
//! std does it.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

use libc::{c_char, c_int};
use std::os::fd::RawFd;

/// What went wrong in the child, sent to the parent with the errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Setup,
    Chdir,
    Exec,
    /// `setgroups`, `setgid`, `setuid`.
    Groups,
    Gid,
    Uid,
    /// `setpriority`.
    Nice,
    /// `setsid` or `ioctl(TIOCSCTTY)`: taking the pseudo-terminal.
    Terminal,
    /// `setrlimit` of this RLIMIT_* resource.
    Rlimit(c_int),
    /// Never sent: the parent found no well-formed report (`why`), so it
    /// killed the child.
    Report {
        why: &'static str,
    },
}

impl Stage {
    /// The number a child sends for this stage.
    pub fn to_wire(self) -> u32 {
        match self {
            Stage::Setup => 1,
            Stage::Chdir => 2,
            Stage::Exec => 3,
            Stage::Report { .. } => 4,
            Stage::Groups => 5,
            Stage::Gid => 6,
            Stage::Uid => 7,
            Stage::Nice => 8,
            Stage::Terminal => 9,
            Stage::Rlimit(resource) => RLIMIT_WIRE + resource as u32,
        }
    }

    /// The stages a child may send; anything else is a malformed report.
    pub fn from_wire(v: u32) -> Option<Stage> {
        match v {
            1 => Some(Stage::Setup),
            2 => Some(Stage::Chdir),
            3 => Some(Stage::Exec),
            5 => Some(Stage::Groups),
            6 => Some(Stage::Gid),
            7 => Some(Stage::Uid),
            8 => Some(Stage::Nice),
            9 => Some(Stage::Terminal),
            v if (RLIMIT_WIRE..RLIMIT_WIRE + 64).contains(&v) => {
                Some(Stage::Rlimit((v - RLIMIT_WIRE) as c_int))
            }
            _ => None,
        }
    }
}

/// `Stage::Rlimit(r)` travels as this plus `r`.
const RLIMIT_WIRE: u32 = 0x100;

/// The failure report's size: errno and stage as big-endian u32s, then
/// [`REPORT_FOOTER`]. Rust std's `Command` sends errno and "NOEX" the same
/// way through a pipe; brood's child, which shares brood's memory, stores
/// them in a buffer of brood's instead (no pipe to make, read and close per
/// spawn). A fixed size and a check word, so that a report cut short can
/// never pass for a report (or for success).
pub const REPORT_LEN: usize = 12;
/// The check word that ends every failure report.
pub const REPORT_FOOTER: [u8; 4] = *b"NOEX";

/// The bytes of a failure report. Plain array copies only: it runs in the
/// child.
pub fn encode_report(stage: Stage, errno: c_int) -> [u8; REPORT_LEN] {
    let mut msg = [0u8; REPORT_LEN];
    let errno = (errno as u32).to_be_bytes();
    let stage = stage.to_wire().to_be_bytes();
    let mut i = 0;
    while i < 4 {
        msg[i] = errno[i];
        msg[4 + i] = stage[i];
        msg[8 + i] = REPORT_FOOTER[i];
        i += 1;
    }
    msg
}

/// Everything the child touches, prepared by the parent before `fork`.
/// Only raw pointers and plain integers: nothing here is dropped in the child.
pub struct ChildSetup<'a> {
    /// Candidate paths for `execve`, tried in order (the PATH search, done
    /// up front). Each is NUL-terminated.
    pub paths: &'a [*const c_char],
    /// NULL-terminated argv.
    pub argv: *const *const c_char,
    /// NULL-terminated envp.
    pub envp: *const *const c_char,
    /// NUL-terminated directory to enter, or null.
    pub cwd: *const c_char,
    /// `dup2(src, dst)` pairs; every `src` is >= 3 (brood keeps 0, 1 and 2 open).
    pub stdio: [(RawFd, RawFd); 3],
    /// Where a failing child writes its [`REPORT_LEN`]-byte report: a
    /// zeroed buffer of brood's, which the child shares (CLONE_VM) and
    /// brood reads once clone has returned.
    pub report: *mut u8,
    /// Signals whose disposition brood changed (handlers and SIG_IGN).
    pub reset_signals: &'a [c_int],
    /// Signals to set to SIG_IGN after the resets (init mode).
    pub ignore_signals: &'a [c_int],
    /// The mask to exec with, or null for an empty one.
    pub mask: *const libc::sigset_t,
    /// Parent-death signal, or 0 for none.
    pub pdeathsig: c_int,
    /// brood's pid, to detect that brood died before the prctl.
    pub parent_pid: libc::pid_t,
    /// Whether to put the child in its own process group.
    pub new_group: bool,
    /// The pty's slave (`tty = true`), or -1: the child makes a session
    /// of its own (leading its group too, so signals to the group reach
    /// it) with this as its controlling terminal. `stdio` dups it onto
    /// 0, 1 and 2.
    pub tty: RawFd,
    /// A terminal whose foreground the child's new group takes (init mode),
    /// or -1. Done here, before exec, so the program never runs in the
    /// background of its terminal, as a shell does it.
    pub foreground_tty: RawFd,
    /// Highest fd number to mark close-on-exec when close_range is missing.
    pub max_fd: c_int,
    /// brood raised its own RLIMIT_NOFILE; the child gets the one brood
    /// was started with (programs using select() break above 1024).
    pub nofile: Option<libc::rlimit>,
    /// The config's limits, set after `nofile`.
    pub rlimits: &'a [(c_int, libc::rlimit)],
    /// The nice value to set, absolute (as systemd's `Nice=`).
    pub nice: Option<c_int>,
    pub umask: Option<libc::mode_t>,
    /// Supplementary groups, gid and uid to switch to: all three or none
    /// (the uid may stay brood's, for `group` alone).
    pub ids: Option<(&'a [libc::gid_t], libc::gid_t, Option<libc::uid_t>)>,
    /// `(src, target)`: one more fd the child keeps across exec as
    /// `target` (s6's notification-fd), or `(-1, -1)`.
    pub extra_fd: (RawFd, RawFd),
}

/// Set the child up and exec. Never returns: the only ways out are a
/// successful `execve` and `_exit(127)`.
///
/// # Safety
/// Must be called only in the child, right after `clone(CLONE_VM |
/// CLONE_VFORK)`, with every pointer in `setup` valid: they point
/// into brood's memory, which the child shares while brood is suspended.
/// The child writes no memory of brood's but `errno`, which brood does not
/// read after the clone, and the report buffer.
pub unsafe fn exec_child(setup: &ChildSetup) -> ! {
    // A signal that lands now must not run brood's handler (it would write
    // into brood's self-pipe, which the child shares). Signals are still
    // blocked from before the fork; reset dispositions before unblocking.
    // Stray signals need no reset: their handler does nothing (see
    // signals::ignore_strays) and exec sets every handler back to SIG_DFL.
    for &sig in setup.reset_signals {
        reset_to_default(sig);
    }
    for &sig in setup.ignore_signals {
        set_ignored(sig);
    }

    if setup.tty >= 0 {
        // setsid cannot fail here (a fresh child leads no group), and the
        // slave was opened O_NOCTTY by brood, so it is no one's terminal.
        if libc::setsid() < 0 || libc::ioctl(setup.tty, libc::TIOCSCTTY, 0) != 0 {
            fail(setup.report, Stage::Terminal);
        }
    } else if setup.new_group && libc::setpgid(0, 0) != 0 {
        fail(setup.report, Stage::Setup);
    }
    if setup.tty < 0 && setup.new_group && setup.foreground_tty >= 0 {
        // SIGTTOU is blocked here, so a background group may take the
        // terminal. Failure is not fatal: the program runs anyway.
        libc::tcsetpgrp(setup.foreground_tty, libc::getpid());
    }

    for &(src, dst) in &setup.stdio {
        if src < 0 {
            continue;
        }
        if src == dst {
            // dup2 onto itself keeps FD_CLOEXEC set; clear it instead.
            if libc::fcntl(src, libc::F_SETFD, 0) != 0 {
                fail(setup.report, Stage::Setup);
            }
        } else if libc::dup2(src, dst) < 0 {
            fail(setup.report, Stage::Setup);
        }
    }

    // Everything above 2 closes at exec, including fds brood inherited from
    // its own parent without O_CLOEXEC.
    if libc::syscall(
        libc::SYS_close_range,
        3 as libc::c_uint,
        libc::c_uint::MAX,
        libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
    ) != 0
    {
        let mut fd = 3;
        while fd <= setup.max_fd {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            fd += 1;
        }
    }

    // After close_range, which would mark it close-on-exec: dup2 gives the
    // new fd no FD_CLOEXEC; `src` itself stays close-on-exec and goes at
    // exec. On its own number, clear the flag instead.
    let (src, target) = setup.extra_fd;
    if src >= 0 {
        if src == target {
            if libc::fcntl(src, libc::F_SETFD, 0) != 0 {
                fail(setup.report, Stage::Setup);
            }
        } else if libc::dup2(src, target) < 0 {
            fail(setup.report, Stage::Setup);
        }
    }

    if let Some(limit) = &setup.nofile {
        libc::setrlimit(libc::RLIMIT_NOFILE, limit);
    }
    for (resource, limit) in setup.rlimits {
        if libc::setrlimit(*resource as _, limit) != 0 {
            fail(setup.report, Stage::Rlimit(*resource));
        }
    }
    if let Some(nice) = setup.nice {
        if libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
            fail(setup.report, Stage::Nice);
        }
    }
    if let Some(mask) = setup.umask {
        libc::umask(mask);
    }
    if let Some((groups, gid, uid)) = setup.ids {
        if libc::syscall(libc::SYS_setgroups, groups.len() as libc::c_long, groups.as_ptr()) != 0 {
            fail(setup.report, Stage::Groups);
        }
        if libc::syscall(libc::SYS_setgid, gid as libc::c_long) != 0 {
            fail(setup.report, Stage::Gid);
        }
        if let Some(uid) = uid {
            if libc::syscall(libc::SYS_setuid, uid as libc::c_long) != 0 {
                fail(setup.report, Stage::Uid);
            }
        }
    }

    if setup.pdeathsig != 0 {
        if libc::prctl(libc::PR_SET_PDEATHSIG, setup.pdeathsig as libc::c_ulong, 0, 0, 0) != 0 {
            fail(setup.report, Stage::Setup);
        }
        // brood may have died between fork and prctl: then the signal will
        // never come, so behave as if it had.
        if libc::getppid() != setup.parent_pid {
            libc::_exit(128 + setup.pdeathsig);
        }
    }

    if !setup.cwd.is_null() && libc::chdir(setup.cwd) != 0 {
        fail(setup.report, Stage::Chdir);
    }

    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    let mask = if setup.mask.is_null() {
        &empty
    } else {
        &*setup.mask
    };
    libc::sigprocmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());

    let errno = execve_candidates(setup.paths, setup.argv, setup.envp);
    report(setup.report, Stage::Exec, errno);
}

/// `execve` each candidate path in turn; returns only when all failed, with
/// the errno to report. The PATH search, as execvp does it: ENOENT-like
/// errors move on to the next candidate; EACCES is remembered, so
/// "permission denied" wins over "not found" when both happened.
/// Async-signal-safe (also used by `brood exec`, which execs in brood itself).
///
/// # Safety
/// Every path must be NUL-terminated, `argv` and `envp` NULL-terminated
/// arrays of NUL-terminated strings, all alive until the call returns.
pub unsafe fn execve_candidates(
    paths: &[*const c_char],
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let mut errno = libc::ENOENT;
    let mut saw_eacces = false;
    for &path in paths {
        libc::execve(path, argv, envp);
        errno = *libc::__errno_location();
        match errno {
            libc::EACCES => saw_eacces = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => break,
        }
    }
    if saw_eacces && (errno == libc::ENOENT || errno == libc::ENOTDIR) {
        errno = libc::EACCES;
    }
    errno
}

/// SIG_DFL through the raw syscall: glibc's `sigaction` refuses signals 32
/// and 33 (its own), yet a parent may have left them ignored, and ignored
/// signals survive exec. An all-zero kernel `sigaction` is SIG_DFL with no
/// flags and an empty mask, whatever the architecture's field order.
///
/// # Safety
/// Changes a process-wide signal disposition: meant for the child only.
pub unsafe fn reset_to_default(sig: c_int) {
    let action = [0u64; 4];
    libc::syscall(
        libc::SYS_rt_sigaction,
        sig as libc::c_long,
        action.as_ptr(),
        std::ptr::null_mut::<u64>(),
        8 as libc::c_long,
    );
}

/// SIG_IGN through the raw syscall, for the same reason as
/// [`reset_to_default`]: an inherited ignored 32 or 33 must stay ignored.
///
/// # Safety
/// Changes a process-wide signal disposition: meant for the child only.
pub unsafe fn set_ignored(sig: c_int) {
    let action = [libc::SIG_IGN as u64, 0, 0, 0];
    libc::syscall(
        libc::SYS_rt_sigaction,
        sig as libc::c_long,
        action.as_ptr(),
        std::ptr::null_mut::<u64>(),
        8 as libc::c_long,
    );
}

/// # Safety
/// As [`report`].
unsafe fn fail(slot: *mut u8, stage: Stage) -> ! {
    report(slot, stage, *libc::__errno_location())
}

/// Leave the failure report where brood reads it, and leave. The bytes go
/// into brood's own memory (CLONE_VM), one volatile store at a time; brood
/// reads them only after clone has returned, that is after this child has
/// exited, so it sees all of them. A child killed halfway (SIGKILL between
/// two stores) leaves a report without its check word, which brood refuses.
///
/// # Safety
/// Child only: `_exit` ends the process without running brood's exit code;
/// `slot` must be [`REPORT_LEN`] writable bytes.
unsafe fn report(slot: *mut u8, stage: Stage, errno: c_int) -> ! {
    let msg = encode_report(stage, errno);
    let mut i = 0;
    while i < REPORT_LEN {
        std::ptr::write_volatile(slot.add(i), msg[i]);
        i += 1;
    }
    libc::_exit(127)
}
