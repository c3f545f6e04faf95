//! Signal handling, in the event loop.
//!
//! The supervisor modes keep the signals they act on blocked and read them
//! from a signalfd ([`SignalQueue`]); init mode, which forwards every signal,
//! uses signal-hook's self-pipe. Either way the loop learns which signals
//! came and acts on them in ordinary code: nothing here runs in a handler.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use libc::c_int;
use signal_hook::consts::signal::*;
use signal_hook_mio::v1_0::Signals;

/// The signals the supervisor modes (spawn, run) act on.
pub const SUPERVISOR_SIGNALS: &[c_int] = &[SIGCHLD, SIGINT, SIGTERM, SIGHUP];

/// Every other signal whose default action would kill brood (ALRM, USR1,
/// PROF, XCPU, XFSZ, PWR, IO, SYS, TRAP, STKFLT, the real-time signals,
/// ...): caught so that a stray one cannot end brood and orphan its
/// children. Left alone: KILL and STOP (cannot be caught), the job-control
/// stops TSTP, TTIN and TTOU (Ctrl-Z must still work), ABRT (a core dump
/// asked for on purpose), the faults ILL, FPE, SEGV and BUS (catching a
/// real fault would loop), and those whose default is to do nothing.
pub fn stray_signals() -> Vec<c_int> {
    let skip = [
        SIGKILL, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU, SIGABRT, SIGILL, SIGFPE, SIGSEGV, SIGBUS, SIGCHLD,
        SIGCONT, SIGWINCH, SIGURG, SIGPIPE,
    ];
    (1..32)
        .chain(libc::SIGRTMIN()..=libc::SIGRTMAX())
        .filter(|s| !skip.contains(s) && !SUPERVISOR_SIGNALS.contains(s))
        .collect()
}

/// The handler of every stray signal: nothing at all.
extern "C" fn do_nothing(_: c_int) {}

/// Catch every stray signal with a handler that does nothing (and restarts
/// what it interrupts), and return them. A handler rather than SIG_IGN or
/// signal-hook, for the children: exec sets every handled signal back to
/// SIG_DFL by itself, while an ignored one would stay ignored in the program
/// unless the child reset it first, one `rt_sigaction` each (about 50, on
/// every spawn, while brood waits in clone). And should one land in a child
/// before its exec, this handler touches nothing of brood's memory.
pub fn catch_strays() -> io::Result<Vec<c_int>> {
    let strays = stray_signals();
    for &sig in &strays {
        // SAFETY: sigaction is plain data, zeroed then filled; the handler
        // is an extern "C" fn that does nothing, which is async-signal-safe.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = do_nothing as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(strays)
}

/// Signals read from a signalfd: blocked for brood's (only) thread, so the
/// kernel queues them for the loop instead of running a handler. Cheaper
/// than a self-pipe per signal (no handler frame, no write and reads of a
/// socket), and a child needs no reset for them: their disposition stays
/// SIG_DFL, and the child sets its own mask before it execs.
pub struct SignalQueue {
    fd: nix::sys::signalfd::SignalFd,
}

impl SignalQueue {
    /// Block `signals` and open a non-blocking signalfd for them.
    pub fn new(signals: &[c_int]) -> io::Result<SignalQueue> {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal};
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let mut set = SigSet::empty();
        for &sig in signals {
            set.add(Signal::try_from(sig).map_err(io::Error::from)?);
        }
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
            .map_err(io::Error::from)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io::Error::from)?;
        Ok(SignalQueue { fd })
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    /// Every signal queued since the last call, in the order they came
    /// (standard signals coalesce: one of each kind at most while queued).
    /// Read in batches; a batch that is not full emptied the queue, and a
    /// signal that comes after it makes the fd readable again.
    pub fn pending(&mut self) -> Vec<c_int> {
        use std::os::fd::AsRawFd;
        const BATCH: usize = 8;
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        let mut out = Vec::new();
        loop {
            // SAFETY: signalfd_siginfo is plain data; all-zero is valid.
            let mut infos: [libc::signalfd_siginfo; BATCH] = unsafe { std::mem::zeroed() };
            // SAFETY: `infos` is valid for writes of its whole size; the
            // kernel writes whole signalfd_siginfo records only.
            let rc = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    infos.as_mut_ptr().cast(),
                    std::mem::size_of_val(&infos),
                )
            };
            if rc < 0 {
                match nix::errno::Errno::last() {
                    nix::errno::Errno::EINTR => continue,
                    nix::errno::Errno::EAGAIN => break,
                    e => {
                        log::warn!("reading signals failed: {e}");
                        break;
                    }
                }
            }
            let got = rc as usize / size;
            out.extend(infos[..got].iter().map(|i| i.ssi_signo as c_int));
            if got < BATCH {
                break;
            }
        }
        out
    }
}

pub fn register(signals: &[c_int]) -> io::Result<Signals> {
    Signals::new(signals)
}

/// What a signal does when it arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    Default,
    Ignore,
    Handler,
}

/// The disposition of `sig` right now, or None for a number the kernel
/// refuses.
pub fn disposition(sig: c_int) -> Option<Disposition> {
    // The raw syscall, so that 32 and 33 (hidden by glibc) are seen too.
    // The handler is the first word of the kernel's struct.
    let mut old = [0u64; 4];
    // SAFETY: a null new action only reads the disposition; `old` has room
    // for the kernel's sigaction (handler, flags, restorer, 8-byte mask).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig as libc::c_long,
            std::ptr::null::<u64>(),
            old.as_mut_ptr(),
            8 as libc::c_long,
        )
    };
    if rc != 0 {
        return None;
    }
    Some(if old[0] == libc::SIG_DFL as u64 {
        Disposition::Default
    } else if old[0] == libc::SIG_IGN as u64 {
        Disposition::Ignore
    } else {
        Disposition::Handler
    })
}

/// Every signal number a process can catch or ignore (all but KILL and STOP).
pub fn all_settable() -> impl Iterator<Item = c_int> {
    (1..=libc::SIGRTMAX()).filter(|&sig| sig != SIGKILL && sig != SIGSTOP)
}

/// Every signal whose disposition is not SIG_DFL right now (brood's
/// handlers, and SIG_IGN such as Rust's SIGPIPE or an inherited nohup),
/// but those in `harmless` (handlers that do nothing, which exec resets).
/// A child resets exactly these before it unblocks signals.
pub fn non_default_dispositions(harmless: &[c_int]) -> Vec<c_int> {
    all_settable()
        .filter(|sig| !harmless.contains(sig))
        .filter(|&sig| matches!(disposition(sig), Some(d) if d != Disposition::Default))
        .collect()
}

/// Whether SIGPIPE was ignored when brood started, before Rust's runtime
/// set it to SIG_IGN (rust-lang/rust#62569). Set by `record_inherited_sigpipe`.
static SIGPIPE_WAS_IGNORED: AtomicBool = AtomicBool::new(false);

/// Record SIGPIPE's inherited disposition. Must run before Rust's runtime
/// starts: `main.rs` calls it from an `.init_array` constructor.
pub fn record_inherited_sigpipe() {
    let ignored = disposition(SIGPIPE) == Some(Disposition::Ignore);
    SIGPIPE_WAS_IGNORED.store(ignored, Ordering::Relaxed);
}

/// Every signal that brood's parent left ignored, as far as brood can still
/// tell (SIGPIPE from the record taken before Rust's runtime changed it).
pub fn inherited_ignored() -> Vec<c_int> {
    all_settable()
        .filter(|&sig| {
            if sig == SIGPIPE {
                SIGPIPE_WAS_IGNORED.load(Ordering::Relaxed)
            } else {
                disposition(sig) == Some(Disposition::Ignore)
            }
        })
        .collect()
}

/// `SIGTERM` for 15, `SIGRTMIN+2` for real-time signals, `SIG42` otherwise.
pub fn name(sig: c_int) -> String {
    if let Ok(s) = nix::sys::signal::Signal::try_from(sig) {
        return s.as_str().to_string();
    }
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    if (min..=max).contains(&sig) {
        if sig == min {
            return "SIGRTMIN".to_string();
        }
        return format!("SIGRTMIN+{}", sig - min);
    }
    format!("SIG{sig}")
}

/// Parse `TERM`, `SIGTERM`, `sigterm` or `15`.
pub fn parse(text: &str) -> Option<c_int> {
    let t = text.trim();
    if let Ok(n) = t.parse::<c_int>() {
        return (1..=libc::SIGRTMAX()).contains(&n).then_some(n);
    }
    let upper = t.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if let Ok(sig) = full.parse::<nix::sys::signal::Signal>() {
        return Some(sig as c_int);
    }
    if let Some(rest) = full.strip_prefix("SIGRTMIN") {
        let off: c_int = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix('+')?.parse().ok()?
        };
        let sig = libc::SIGRTMIN() + off;
        return (sig <= libc::SIGRTMAX()).then_some(sig);
    }
    None
}

/// [`parse`] for a command-line flag (`--pdeathsig`): SIGKILL and SIGSTOP
/// are allowed, 0 is not.
pub fn parse_arg(text: &str) -> Result<c_int, String> {
    parse(text).ok_or_else(|| format!("unknown signal '{text}' (try TERM, KILL or a number)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for sig in [SIGTERM, SIGKILL, SIGINT, SIGUSR1, libc::SIGRTMIN() + 3] {
            assert_eq!(parse(&name(sig)), Some(sig), "{}", name(sig));
        }
    }

    #[test]
    fn short_and_numeric_forms_parse() {
        assert_eq!(parse("TERM"), Some(SIGTERM));
        assert_eq!(parse("hup"), Some(SIGHUP));
        assert_eq!(parse("9"), Some(SIGKILL));
        assert_eq!(parse("NOPE"), None);
        assert_eq!(parse("0"), None);
    }
}
