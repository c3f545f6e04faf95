//! `brood init`: PID 1 (or subreaper) mode for containers, like tini.
//!
//! Runs one command on brood's own stdio, forwards every signal that can be
//! caught to it, reaps every orphan that is re-parented to brood, and exits
//! with the command's status. The command inherits brood's signal mask and
//! ignored signals, as it would without brood in between. When the command
//! has exited, whatever it left behind gets SIGTERM, then SIGKILL after the
//! leftover grace, so a container stops cleanly.

use std::io;
use std::time::{Duration, Instant};

use libc::c_int;
use mio::{Events as MioEvents, Interest, Poll, Token};
use signal_hook::consts::signal::*;

use crate::config::ProgramSpec;
use crate::error::Error;
use crate::logging;
use crate::reaper::{self, ExitStatus, Reaped};
use crate::signals::{self, Disposition};
use crate::spawn::{self, plan, SpawnContext, Stdio};

/// Signals brood does not forward: KILL and STOP cannot be caught, CHLD is
/// brood's own (reaping), and the synchronous faults are left to their
/// default action (signal-hook refuses ILL, FPE and SEGV; Rust's runtime
/// uses SEGV and BUS for stack overflows; ABRT is how brood itself aborts).
const NOT_FORWARDED: &[c_int] = &[
    SIGKILL, SIGSTOP, SIGCHLD, SIGILL, SIGFPE, SIGSEGV, SIGBUS, SIGABRT,
];

/// How often the SIGKILL round repeats while leftovers remain (one that
/// forked between a scan and the kill is caught by the next round).
const KILL_ROUND: Duration = Duration::from_secs(1);

/// The signals forwarded to the command: every signal a process can catch
/// but [`NOT_FORWARDED`] and glibc's internal 32 and 33. On a terminal,
/// TTIN and TTOU are ignored instead: brood runs in the background of the
/// command's foreground group, and must neither be stopped nor relay the
/// SIGTTOU its own `tcsetpgrp` would raise.
pub fn forwarded(on_tty: bool) -> Vec<c_int> {
    signals::all_settable()
        .filter(|sig| !NOT_FORWARDED.contains(sig))
        .filter(|sig| !(32..libc::SIGRTMIN()).contains(sig))
        .filter(|&sig| !(on_tty && (sig == SIGTTIN || sig == SIGTTOU)))
        .collect()
}

pub struct InitOptions {
    /// Forward to the command's process group, not just the command.
    pub group: bool,
    /// After the command exits: SIGTERM to leftovers, SIGKILL this much later.
    pub leftover_grace: Duration,
    /// brood's own parent-death signal (tini's -p).
    pub pdeathsig: Option<c_int>,
    /// Warn on every reaped zombie that is not the command (tini's -w).
    pub warn_on_reap: bool,
    /// Exit codes of the command that brood turns into 0 (tini's -e).
    pub expect_codes: Vec<u8>,
}

/// What the child does with its dispositions before exec so that it starts
/// with what brood inherited: `(reset to SIG_DFL, set to SIG_IGN)`.
///
/// `now` is each signal's disposition in brood after brood set up its own
/// handling; `inherited_ignored` the signals brood's parent left ignored.
/// A handler brood installed goes back to what the parent left (ignored or
/// default); a signal brood ignored itself (Rust's SIGPIPE, TTIN/TTOU on a
/// terminal) goes back to default; an inherited SIG_IGN stays.
pub fn child_dispositions(
    now: impl Fn(c_int) -> Option<Disposition>,
    inherited_ignored: &[c_int],
) -> (Vec<c_int>, Vec<c_int>) {
    let mut reset = Vec::new();
    let mut ignore = Vec::new();
    for sig in signals::all_settable() {
        let was_ignored = inherited_ignored.contains(&sig);
        match now(sig) {
            Some(Disposition::Handler) if was_ignored => ignore.push(sig),
            Some(Disposition::Handler) => reset.push(sig),
            Some(Disposition::Ignore) if !was_ignored => reset.push(sig),
            _ => {}
        }
    }
    (reset, ignore)
}

pub fn run(spec: ProgramSpec, opts: InitOptions) -> Result<i32, Error> {
    if let Some(sig) = opts.pdeathsig {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(Error::io(
                format!("cannot set the parent-death signal {}", signals::name(sig)),
                io::Error::last_os_error(),
            ));
        }
    }
    let me = std::process::id() as i32;
    // SAFETY: prctl with integer arguments only.
    if me != 1 && unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        log::warn!(
            "not PID 1 and cannot become a child subreaper ({}): orphans will not be reaped here",
            io::Error::last_os_error()
        );
    }

    // What the command must inherit, taken before brood changes anything:
    // the mask and the ignored signals. brood itself runs unblocked, so that
    // a signal its parent blocked is still forwarded and SIGCHLD still comes.
    let inherited_ignored = signals::inherited_ignored();
    // SAFETY: sigset_t is plain data, zeroed is a valid empty set, and
    // pthread_sigmask only writes the current mask into it.
    let inherited_mask = unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, &mut mask);
        mask
    };

    // Handing the terminal to the command makes brood a background process
    // of it: ignore the job-control signals that would otherwise stop brood
    // when it writes to the terminal or takes it back.
    let tty = foreground_tty();
    if tty {
        // SAFETY: setting dispositions to SIG_IGN installs no handler code.
        unsafe {
            libc::signal(SIGTTOU, libc::SIG_IGN);
            libc::signal(SIGTTIN, libc::SIG_IGN);
        }
    }
    let mut watched = forwarded(tty);
    watched.push(SIGCHLD);
    let mut sigs = signals::register(&watched).map_err(|e| Error::io("cannot install signal handlers", e))?;
    let mut poll = Poll::new().map_err(|e| Error::io("cannot create epoll", e))?;
    poll.registry()
        .register(&mut sigs, Token(0), Interest::READABLE)
        .map_err(|e| Error::io("cannot watch signals", e))?;

    let (reset, ignore) = child_dispositions(signals::disposition, &inherited_ignored);
    let mut ctx = SpawnContext::new(reset, None).map_err(|e| Error::io("cannot open /dev/null", e))?;
    ctx.ignore_signals = ignore;
    ctx.child_mask = Some(inherited_mask);
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
            reaper::reap_all(|_| {});
            return Ok(if e.errno() == nix::errno::Errno::ENOENT {
                127
            } else {
                126
            });
        }
    };
    if tty {
        // SAFETY: tcsetpgrp takes integers; fd 0 is brood's terminal.
        unsafe { libc::tcsetpgrp(0, child) };
    }
    log::debug!("started {} pid {child}", image.display_name());
    let leftovers = if me == 1 {
        Leftovers::Namespace
    } else {
        Leftovers::Descendants
    };

    let mut status: Option<ExitStatus> = None;
    // After the command has exited: when the next SIGKILL round is due.
    let mut kill_at: Option<Instant> = None;
    // SIGKILL rounds in a row that found no leftover although some remain.
    let mut empty_rounds = 0;
    let mut events = MioEvents::with_capacity(64);
    loop {
        logging::flush_to_stderr();
        if let Some(s) = status {
            if !reaper::has_children() {
                if tty {
                    // SAFETY: integers only; brood takes its terminal back.
                    unsafe { libc::tcsetpgrp(0, libc::getpgrp()) };
                }
                log::debug!("{} {}", image.display_name(), s.describe());
                return Ok(remap(shell_code(s), &opts.expect_codes));
            }
            match kill_at {
                None => {
                    // The command is gone; stop what it left behind.
                    leftovers.signal(SIGTERM);
                    kill_at = Some(Instant::now() + opts.leftover_grace);
                }
                Some(t) if Instant::now() >= t => {
                    if leftovers.signal(SIGKILL) > 0 {
                        empty_rounds = 0;
                    } else {
                        empty_rounds += 1;
                    }
                    // Children remain, yet two rounds in a row found none
                    // (one may just have become a zombie): /proc is another
                    // PID namespace's. Waiting would never end.
                    if empty_rounds >= 2 {
                        log::warn!(
                            "leftovers of {} cannot be found in /proc (another PID namespace's?): leaving them",
                            image.display_name()
                        );
                        return Ok(remap(shell_code(s), &opts.expect_codes));
                    }
                    kill_at = Some(Instant::now() + KILL_ROUND);
                }
                Some(_) => {}
            }
        }
        let timeout = kill_at.map(|t| t.saturating_duration_since(Instant::now()));
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
                // SAFETY: kill takes integers; CMD is brood's unreaped child.
                unsafe { libc::kill(target, sig) };
                log::debug!("forwarded {} to {target}", signals::name(sig));
            }
        }
        reaper::reap_all(|r| {
            if let Reaped::Exited { pid, status: s } = r {
                if pid == child {
                    status = Some(s);
                } else if opts.warn_on_reap {
                    log::warn!("reaped zombie process with pid {pid}");
                }
            }
        });
    }
}

fn foreground_tty() -> bool {
    // SAFETY: isatty, tcgetpgrp and getpgrp take integers only.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}

/// The shell's convention: the code, or 128 + the signal.
pub fn shell_code(s: ExitStatus) -> i32 {
    match s {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal { signal, .. } => 128 + signal,
    }
}

/// tini's -e: an expected code becomes 0.
fn remap(code: i32, expected: &[u8]) -> i32 {
    if expected.iter().any(|&e| i32::from(e) == code) {
        0
    } else {
        code
    }
}

/// How brood reaches what the command left behind.
#[derive(Clone, Copy)]
enum Leftovers {
    /// As PID 1, `kill(-1, ...)` reaches exactly every other process of
    /// this PID namespace, whatever /proc is mounted.
    Namespace,
    /// As a subreaper, brood's descendants, found in /proc.
    Descendants,
}

impl Leftovers {
    /// Send `sig` to every leftover; returns how many were found (for
    /// `Namespace`, 1 when any exists).
    fn signal(self, sig: c_int) -> usize {
        match self {
            // SAFETY: kill takes integers; as PID 1, -1 is this namespace.
            Leftovers::Namespace => usize::from(unsafe { libc::kill(-1, sig) } == 0),
            Leftovers::Descendants => {
                let pids = descendants();
                log::debug!("{} to leftovers {pids:?}", signals::name(sig));
                for &pid in &pids {
                    // SAFETY: kill takes integers; each is a descendant found
                    // just now under brood (the subreaper).
                    unsafe { libc::kill(pid, sig) };
                }
                pids.len()
            }
        }
    }
}

/// Every live descendant of brood, as pids of brood's own PID namespace.
///
/// /proc may belong to an ancestor namespace (`unshare --pid --fork`
/// without `--mount-proc`): its pids are not the ones `kill` takes. So the
/// walk starts at /proc/self (brood as /proc sees it), and each pid is
/// translated through the `NSpid:` line of its status file. A /proc where
/// brood is not visible at all yields nothing.
fn descendants() -> Vec<i32> {
    let Some(root) = std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse::<i32>().ok()))
    else {
        return Vec::new();
    };
    // How many namespaces /proc's is above brood's: the index of brood's
    // own namespace in every NSpid line.
    let depth = ns_pids(root).map_or(0, |p| p.len().saturating_sub(1));
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
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parent {
            if ppid == p && pid != root {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    if depth == 0 {
        return found;
    }
    found
        .into_iter()
        .filter_map(|pid| ns_pids(pid).and_then(|p| p.get(depth).copied()))
        .collect()
}

/// The `NSpid:` line of a process: its pid in /proc's namespace, then in
/// each nested one down to its own.
fn ns_pids(pid: i32) -> Option<Vec<i32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().map(|f| f.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_every_catchable_signal_but_chld_and_the_faults() {
        let all = forwarded(false);
        for sig in [
            SIGHUP,
            SIGINT,
            SIGQUIT,
            SIGUSR1,
            SIGUSR2,
            SIGTERM,
            SIGWINCH,
            SIGALRM,
            SIGCONT,
            SIGTSTP,
            SIGTTIN,
            SIGTTOU,
            libc::SIGPWR,
            SIGVTALRM,
            SIGPROF,
            SIGXCPU,
            SIGXFSZ,
            SIGIO,
            SIGURG,
            SIGPIPE,
            libc::SIGSTKFLT,
            SIGSYS,
            SIGTRAP,
        ] {
            assert!(all.contains(&sig), "{}", signals::name(sig));
        }
        for sig in libc::SIGRTMIN()..=libc::SIGRTMAX() {
            assert!(all.contains(&sig), "{}", signals::name(sig));
        }
        for sig in [
            SIGCHLD, SIGKILL, SIGSTOP, SIGSEGV, SIGILL, SIGFPE, SIGBUS, SIGABRT, 32, 33,
        ] {
            assert!(!all.contains(&sig), "{}", signals::name(sig));
        }
        let tty = forwarded(true);
        assert!(!tty.contains(&SIGTTIN) && !tty.contains(&SIGTTOU));
        assert!(tty.contains(&SIGTSTP));
    }

    #[test]
    fn child_gets_back_what_the_parent_left() {
        // brood caught HUP (nohup'd: inherited ignored) and TERM, and ignored
        // PIPE itself; QUIT was inherited ignored and left alone.
        let now = |sig| {
            Some(match sig {
                SIGHUP | SIGTERM => Disposition::Handler,
                SIGPIPE | SIGQUIT => Disposition::Ignore,
                _ => Disposition::Default,
            })
        };
        let (reset, ignore) = child_dispositions(now, &[SIGHUP, SIGQUIT]);
        assert_eq!(reset, vec![SIGPIPE, SIGTERM]);
        assert_eq!(ignore, vec![SIGHUP]);
    }

    #[test]
    fn expected_codes_become_zero() {
        assert_eq!(remap(3, &[3, 143]), 0);
        assert_eq!(remap(143, &[3, 143]), 0);
        assert_eq!(remap(4, &[3, 143]), 4);
        assert_eq!(remap(0, &[]), 0);
    }
}
