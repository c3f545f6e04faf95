//! `brood init`: PID 1 (or subreaper) mode for containers, like tini.
//!
//! Runs one command on brood's own stdio, forwards signals to it, reaps
//! every orphan that is re-parented to brood, and exits with the command's
//! status. When the command has exited, whatever it left behind gets
//! SIGTERM, then SIGKILL after the grace, so a container stops cleanly.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use mio::{Events as MioEvents, Interest, Poll, Token};
use signal_hook::consts::signal::*;

use crate::config::ProgramSpec;
use crate::error::Error;
use crate::logging;
use crate::reaper::{self, ExitStatus, Reaped};
use crate::signals;
use crate::spawn::{self, plan, SpawnContext, Stdio};

/// The signals forwarded to the command.
pub const FORWARDED: &[i32] = &[SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH];

pub struct InitOptions {
    /// Forward to the command's process group, not just the command.
    pub group: bool,
    pub grace: Duration,
}

pub fn run(spec: ProgramSpec, opts: InitOptions) -> Result<i32, Error> {
    let me = std::process::id() as i32;
    if me != 1 && unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        log::warn!(
            "not PID 1 and cannot become a child subreaper ({}): orphans will not be reaped here",
            io::Error::last_os_error()
        );
    }
    let mut watched: Vec<i32> = FORWARDED.to_vec();
    watched.push(SIGCHLD);
    let mut sigs = signals::register(&watched).map_err(|e| Error::io("cannot install signal handlers", e))?;
    let mut poll = Poll::new().map_err(|e| Error::io("cannot create epoll", e))?;
    poll.registry()
        .register(&mut sigs, Token(0), Interest::READABLE)
        .map_err(|e| Error::io("cannot watch signals", e))?;

    // Handing the terminal to the command makes brood a background process
    // of it: ignore the job-control signals that would otherwise stop brood
    // when it writes to the terminal or takes it back.
    let tty = foreground_tty();
    if tty {
        unsafe {
            libc::signal(SIGTTOU, libc::SIG_IGN);
            libc::signal(SIGTTIN, libc::SIG_IGN);
        }
    }
    let mut ctx = SpawnContext::new(signals::non_default_dispositions(), None)
        .map_err(|e| Error::io("cannot open /dev/null", e))?;
    ctx.inherit_stdin = true;
    if tty {
        ctx.foreground_tty = Some(0);
    }
    let image = plan::Image::new(&spec.program, &spec.env, spec.cwd.as_deref())?;
    let argv = plan::build_argv(&spec.program, &spec.args, None, false)?;
    let child = match spawn::spawn(&ctx, &image, &argv, Stdio::Inherit) {
        Ok(c) => c.pid.as_raw(),
        Err(e) => {
            // The shell's codes: 127 not found, 126 found but not runnable.
            log::error!("{}", e.describe(&image));
            reap_everything();
            return Ok(if e.errno() == nix::errno::Errno::ENOENT {
                127
            } else {
                126
            });
        }
    };
    if tty {
        unsafe { libc::tcsetpgrp(0, child) };
    }
    log::debug!("started {} pid {child}", image.display_name());

    let mut status: Option<ExitStatus> = None;
    let mut kill_at: Option<Instant> = None;
    let mut events = MioEvents::with_capacity(64);
    loop {
        logging::flush_to_stderr();
        if let Some(s) = status {
            if !reaper::has_children() {
                if tty {
                    unsafe { libc::tcsetpgrp(0, libc::getpgrp()) };
                }
                log::debug!("{} {}", image.display_name(), s.describe());
                return Ok(shell_code(s));
            }
            if kill_at.is_none() {
                // The command is gone; stop what it left behind.
                signal_descendants(me, SIGTERM);
                kill_at = Some(Instant::now() + opts.grace);
            }
        }
        let timeout = match (status, kill_at) {
            (Some(_), Some(t)) => Some(t.saturating_duration_since(Instant::now())),
            (Some(_), None) => Some(Duration::ZERO),
            _ => None,
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(Error::io("epoll failed", e));
            }
            continue;
        }
        for sig in sigs.pending() {
            if sig == SIGCHLD {
                continue;
            }
            if status.is_none() {
                let target = if opts.group { -child } else { child };
                unsafe { libc::kill(target, sig) };
                log::debug!("forwarded {} to {target}", signals::name(sig));
            }
        }
        let mut reaped: HashMap<i32, ExitStatus> = HashMap::new();
        reaper::reap_all(|r| {
            if let Reaped::Exited { pid, status } = r {
                reaped.insert(pid, status);
            }
        });
        if let Some(s) = reaped.get(&child) {
            status = Some(*s);
        }
        if let (Some(t), true) = (kill_at, status.is_some()) {
            if Instant::now() >= t {
                signal_descendants(me, SIGKILL);
                kill_at = Some(Instant::now() + Duration::from_secs(3600));
            }
        }
    }
}

fn foreground_tty() -> bool {
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// The shell's convention: the code, or 128 + the signal.
pub fn shell_code(s: ExitStatus) -> i32 {
    match s {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal { signal, .. } => 128 + signal,
    }
}

fn reap_everything() {
    reaper::reap_all(|_| {});
}

/// Every live descendant of `root`, from /proc.
fn descendants(root: i32) -> Vec<i32> {
    let mut parent: Vec<(i32, i32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The command name may hold spaces and parentheses: parse after the last ')'.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next().unwrap_or("");
            let ppid: i32 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
            if state != "Z" {
                parent.push((pid, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parent {
            if ppid == p && pid != root {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

fn signal_descendants(root: i32, sig: i32) {
    for pid in descendants(root) {
        unsafe { libc::kill(pid, sig) };
    }
}
