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

use child::{ChildSetup, Stage};
use plan::{CArray, Image};

/// Where the child's stdout and stderr go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdio {
    /// Through pipes that brood reads.
    Capture,
    /// brood's own stdout and stderr.
    Inherit,
}

/// Settings that are the same for every spawn of a run.
pub struct SpawnContext {
    pub reset_signals: Vec<libc::c_int>,
    pub pdeathsig: Option<libc::c_int>,
    pub parent_pid: libc::pid_t,
    pub max_fd: libc::c_int,
    /// Opened once: the children's stdin.
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
    pub fn new(
        reset_signals: Vec<libc::c_int>,
        pdeathsig: Option<libc::c_int>,
    ) -> std::io::Result<SpawnContext> {
        let dev_null = nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(std::io::Error::from)?;
        let original_nofile = raise_nofile_limit();
        let max_fd = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft.min(1 << 20) as libc::c_int)
            .unwrap_or(1024);
        Ok(SpawnContext {
            reset_signals,
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

pub struct Spawned {
    pub pid: Pid,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
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
                stage: Stage::Setup, ..
            } => {
                format!("cannot exec '{prog}': child setup failed: {reason}")
            }
            SpawnError::Exec { .. } => format!("cannot exec '{prog}': {reason}"),
        }
    }
}

fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd), Errno> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

fn set_nonblocking(fd: RawFd) {
    // Only ever called on brood's own read ends, never on a shared fd.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// Fork one child and exec `image` with `argv` in it.
pub fn spawn(ctx: &SpawnContext, image: &Image, argv: &CArray, stdio: Stdio) -> Result<Spawned, SpawnError> {
    let (out, err) = match stdio {
        Stdio::Capture => (
            Some(pipe_cloexec().map_err(SpawnError::Fork)?),
            Some(pipe_cloexec().map_err(SpawnError::Fork)?),
        ),
        Stdio::Inherit => (None, None),
    };
    // Non-blocking: see the read after the clone.
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
        .map_err(SpawnError::Fork)?;

    let stdin_fd = if ctx.inherit_stdin {
        0
    } else {
        ctx.dev_null.as_ref().map_or(-1, |f| f.as_raw_fd())
    };
    let setup = ChildSetup {
        paths: image.paths.ptrs(),
        argv: argv.as_ptr(),
        envp: image.envp.as_ptr(),
        cwd: image.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        stdio: [
            (stdin_fd, 0),
            (out.as_ref().map_or(-1, |(_, w)| w.as_raw_fd()), 1),
            (err.as_ref().map_or(-1, |(_, w)| w.as_raw_fd()), 2),
        ],
        err_fd: err_w.as_raw_fd(),
        reset_signals: &ctx.reset_signals,
        pdeathsig: ctx.pdeathsig.unwrap_or(0),
        parent_pid: ctx.parent_pid,
        new_group: ctx.new_group,
        foreground_tty: ctx.foreground_tty.unwrap_or(-1),
        max_fd: ctx.max_fd,
        nofile: ctx.original_nofile,
    };

    // Block every signal across fork, so that none runs brood's handler in
    // the child before it has reset its dispositions.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut saved: libc::sigset_t = unsafe { std::mem::zeroed() };
    let stack_top = unsafe {
        let stack = &mut *ctx.child_stack.get();
        // The stack grows down; u128 elements keep the top 16-byte aligned.
        stack.as_mut_ptr().add(stack.len()) as *mut libc::c_void
    };
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
    drop(err_w);
    if ctx.new_group {
        // Also from the parent, so the group exists before we can signal it.
        // EACCES after the child's exec is harmless: it did it itself.
        let _ = nix::unistd::setpgid(pid, pid);
    }
    let (out_r, err_r_pipe) = match (out, err) {
        (Some((or, _ow)), Some((er, _ew))) => (Some(or), Some(er)),
        _ => (None, None),
    };

    // With CLONE_VFORK, clone returns once the child has passed exec's
    // point of no return or has exited. A failing child writes its 8 bytes
    // before it exits, so they are here now; a child past the point of no
    // return can write nothing more. So "nothing to read" already means
    // success: brood need not wait for EOF, which comes only after the
    // kernel has closed every close-on-exec fd of the child (thousands, with
    // thousands of children) and would serialize spawns on that work.
    let mut msg = [0u8; 8];
    let mut got = 0;
    while got < msg.len() {
        match nix::unistd::read(&err_r, &mut msg[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    if got == msg.len() {
        let stage = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]);
        let errno = u32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]);
        return Err(SpawnError::Exec {
            pid,
            stage: Stage::from_u32(stage),
            errno: Errno::from_raw(errno as i32),
        });
    }
    for fd in out_r.iter().chain(err_r_pipe.iter()) {
        set_nonblocking(fd.as_raw_fd());
    }
    Ok(Spawned {
        pid,
        stdout: out_r,
        stderr: err_r_pipe,
    })
}

/// Replace brood itself with `image` and `argv` (`brood exec`): no fork,
/// so the command keeps brood's pid, terminal, process group, signal mask
/// and ignored signals, and its parent sees its own exit status. Only
/// SIGPIPE goes back to SIG_DFL: Rust ignored it at start-up, the user did
/// not. Returns only when exec failed: the error, with brood's pid.
pub fn replace_process(image: &Image, argv: &CArray) -> SpawnError {
    let pid = nix::unistd::getpid();
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    if let Some(dir) = &image.cwd {
        if unsafe { libc::chdir(dir.as_ptr()) } != 0 {
            return SpawnError::Exec {
                pid,
                stage: Stage::Chdir,
                errno: Errno::last(),
            };
        }
    }
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
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur >= lim.rlim_max {
        return None;
    }
    let original = lim;
    lim.rlim_cur = lim.rlim_max;
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return None;
    }
    Some(original)
}

/// Ensure fds 0, 1 and 2 are open, so that no pipe brood makes lands on
/// them (a child would then get its pipe on the wrong number).
pub fn ensure_std_fds() {
    for fd in 0..3 {
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            let flags = if fd == 0 { libc::O_RDONLY } else { libc::O_WRONLY };
            let null = unsafe { libc::open(c"/dev/null".as_ptr(), flags) };
            if null >= 0 && null != fd {
                unsafe {
                    libc::dup2(null, fd);
                    libc::close(null);
                }
            }
        }
    }
}
