//! The process table: one entry per child, its state, and its pipes.
//!
//! An entry lives from fork until both the leader is reaped and both pipes
//! reached EOF (a grandchild can hold a pipe open after the leader exits).

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::core::ids::{ChildId, InstanceId, ProgramId};
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
    pub id: ChildId,
    pub program: ProgramId,
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
    /// SIGKILL was sent to its group already.
    pub killed: bool,
    /// The run-mode instance this child is a run of.
    pub instance: Option<InstanceId>,
    /// `ready = { log = "..." }`: matched against each line until one does.
    pub ready_log: Option<crate::probe::LineMatcher>,
    /// The write end of its stdin pipe, held (never written) until the
    /// child is reaped.
    pub stdin: Option<OwnedFd>,
    /// It runs on a pseudo-terminal: `pipes[Stdout]` is the master.
    pub tty: bool,
    /// The control client attached to its terminal (`ctl attach`), if any.
    /// Client ids are never reused, so a stale one names no client.
    pub attached: Option<usize>,
}

impl Child {
    pub fn has_pipes(&self) -> bool {
        self.pipes.iter().any(Option::is_some)
    }

    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}
