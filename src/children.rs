//! The process table: one entry per child, its state, and its pipes.
//!
//! An entry lives from fork until both the leader is reaped and both pipes
//! reached EOF (a grandchild can hold a pipe open after the leader exits).

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::output::LineFramer;
use crate::reaper::ExitStatus;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Running,
    /// Stopped by job control (SIGSTOP/SIGTSTP), with the signal.
    Paused(i32),
    /// brood sent the stop signal; SIGKILL at `kill_at` if still there.
    Stopping,
    Exited(ExitStatus),
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused(_) => "stopped",
            State::Stopping => "stopping",
            State::Exited(_) => "exited",
        }
    }

    pub fn leader_alive(&self) -> bool {
        !matches!(self, State::Exited(_))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout = 0,
    Stderr = 1,
}

pub struct Pipe {
    pub fd: OwnedFd,
    pub framer: LineFramer,
}

pub struct Child {
    pub id: u64,
    pub program: usize,
    pub n: u64,
    pub label: String,
    pub pid: i32,
    pub started: Instant,
    pub state: State,
    pub pipes: [Option<Pipe>; 2],
    /// Cached `LABEL | ` prefix per stream, and the width it was padded to.
    pub prefix: [(Vec<u8>, usize); 2],
    /// brood asked it to stop (console `k`, shutdown): its exit is not a
    /// failure.
    pub stop_requested: bool,
    pub kill_at: Option<Instant>,
    /// SIGKILL was sent to its group already.
    pub killed: bool,
    /// The run-mode instance this child is a run of.
    pub slot: Option<usize>,
}

impl Child {
    pub fn has_pipes(&self) -> bool {
        self.pipes.iter().any(Option::is_some)
    }

    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}

/// `4.2s`, `3m05s`, `2h07m`: short enough for a table.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// Whether a process group still has a member. A group's id cannot be
/// reused while it has members, so this never answers for a stranger.
pub fn group_alive(pgid: i32) -> bool {
    unsafe { libc::kill(-pgid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// Send `sig` to a process group. ESRCH (already gone) is not an error.
pub fn signal_group(pgid: i32, sig: i32) -> bool {
    unsafe { libc::kill(-pgid, sig) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_millis(4200)), "4.2s");
        assert_eq!(human_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(human_duration(Duration::from_secs(7620)), "2h07m");
    }
}
