//! The only caller of `waitpid`.
//!
//! SIGCHLD coalesces, so every wake drains `waitpid(-1, WNOHANG)` until it
//! returns 0 or ECHILD. The raw status is decoded here rather than through
//! nix's `WaitStatus`, which refuses signal numbers it has no name for (a
//! child killed by a real-time signal would be reaped and then lost).

use nix::errno::Errno;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal { signal: i32, core: bool },
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }

    pub fn describe(&self) -> String {
        match *self {
            ExitStatus::Code(c) => format!("exited with code {c}"),
            ExitStatus::Signal { signal, core } => format!(
                "killed by signal {}{}",
                crate::signals::name(signal),
                if core { " (core dumped)" } else { "" }
            ),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reaped {
    Exited { pid: i32, status: ExitStatus },
    Stopped { pid: i32, signal: i32 },
    Continued { pid: i32 },
}

/// Collect every child that changed state, calling `on_reaped` for each.
pub fn reap_all(mut on_reaped: impl FnMut(Reaped)) {
    loop {
        let mut status: libc::c_int = 0;
        let flags = libc::WNOHANG | libc::WUNTRACED | libc::WCONTINUED;
        // SAFETY: `status` is a local the kernel may write; nothing else.
        let pid = unsafe { libc::waitpid(-1, &mut status, flags) };
        if pid == 0 {
            return;
        }
        if pid < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                // ECHILD: nothing left to wait for.
                _ => return,
            }
        }
        on_reaped(decode(pid, status));
    }
}

/// Whether brood has any child left, zombie or alive, without reaping.
pub fn has_children() -> bool {
    // SAFETY: siginfo_t is a plain C struct (integers and a union of them)
    // for which all-zero bytes are valid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WSTOPPED | libc::WCONTINUED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: `info` is a local the kernel may write; WNOWAIT reaps nothing.
    unsafe { libc::waitid(libc::P_ALL, 0, &mut info, flags) == 0 }
}

fn decode(pid: i32, status: libc::c_int) -> Reaped {
    if libc::WIFEXITED(status) {
        Reaped::Exited {
            pid,
            status: ExitStatus::Code(libc::WEXITSTATUS(status)),
        }
    } else if libc::WIFSIGNALED(status) {
        Reaped::Exited {
            pid,
            status: ExitStatus::Signal {
                signal: libc::WTERMSIG(status),
                core: libc::WCOREDUMP(status),
            },
        }
    } else if libc::WIFSTOPPED(status) {
        Reaped::Stopped {
            pid,
            signal: libc::WSTOPSIG(status),
        }
    } else {
        Reaped::Continued { pid }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_exit_code_and_signal_with_core() {
        assert_eq!(
            decode(5, 3 << 8),
            Reaped::Exited {
                pid: 5,
                status: ExitStatus::Code(3)
            }
        );
        assert_eq!(
            decode(5, 11 | 0x80),
            Reaped::Exited {
                pid: 5,
                status: ExitStatus::Signal {
                    signal: 11,
                    core: true
                }
            }
        );
        assert_eq!(
            decode(5, (19 << 8) | 0x7f),
            Reaped::Stopped { pid: 5, signal: 19 }
        );
        assert_eq!(decode(5, 0xffff), Reaped::Continued { pid: 5 });
    }

    #[test]
    fn describes_like_a_shell() {
        assert_eq!(ExitStatus::Code(0).describe(), "exited with code 0");
        assert_eq!(
            ExitStatus::Signal {
                signal: 9,
                core: false
            }
            .describe(),
            "killed by signal SIGKILL"
        );
    }
}
