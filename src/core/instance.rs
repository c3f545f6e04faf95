//! One instance of a program (`web.2`): what brood wants of it (its goal)
//! kept apart from what brood has seen of it (its phase), as s6-supervise
//! keeps `flagwantup` beside `state`. Every change goes through
//! [`Instance::step`], a pure function of (state, input, time) that returns
//! actions for the loop to execute.

use std::time::{Duration, Instant};

use super::event::Event;
use super::ids::{ChildId, InstanceId, ProgramId};
use super::policy::{self, Budget, Decision, Policy};
use crate::reaper::ExitStatus;

/// What brood wants of the instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// Keep it running, as its restart policy says.
    Up,
    /// Keep it down: stopped by the user, or by shutdown.
    Down,
    /// Scaled away: forget it once it has exited.
    Removed,
}

/// What brood has seen of the instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// A spawn was asked of the loop and has not been answered yet.
    Pending,
    Running {
        child: ChildId,
        pid: i32,
        since: Instant,
    },
    /// The stop signal was sent; SIGKILL follows after the grace.
    Stopping {
        child: ChildId,
        pid: i32,
        since: Instant,
    },
    /// Waiting out the restart delay.
    Backoff { until: Instant },
    /// Not running, and nothing starts it again without a request.
    Exited,
    /// Failed more than its restart budget allows.
    Fatal,
}

/// What happened to the instance, or what was asked of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Bring it up (`ctl start`, a scale up of a removed one).
    Start,
    /// Bring it down and keep it down (`k`, `ctl stop`).
    Stop,
    /// Stop it if it runs and start it again (`r`, `ctl restart`).
    Restart,
    /// Scaled away.
    Remove,
    /// brood is shutting down.
    Shutdown,
    Spawned {
        child: ChildId,
        pid: i32,
    },
    SpawnFailed,
    Exited {
        status: ExitStatus,
        ran_for: Duration,
    },
    /// Its backoff timer fired.
    BackoffOver,
}

/// What the loop must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Spawn(InstanceId),
    /// Stop ladder: stop signal to the group, SIGKILL after the grace.
    StopChild(ChildId),
    /// Fire `BackoffOver` at that time.
    Backoff(InstanceId, Instant),
    Emit(Event),
    /// The instance is gone; drop it.
    Forget(InstanceId),
}

#[derive(Clone, Debug)]
pub struct Instance {
    pub id: InstanceId,
    pub program: ProgramId,
    pub n: u64,
    pub label: String,
    pub goal: Goal,
    pub phase: Phase,
    pub budget: Budget,
    pub last_exit: Option<ExitStatus>,
}

impl Instance {
    /// A new instance, wanted up, not yet spawned: the caller starts it
    /// with `Input::Start`.
    pub fn new(id: InstanceId, program: ProgramId, n: u64, label: String) -> Instance {
        Instance {
            id,
            program,
            n,
            label,
            goal: Goal::Up,
            phase: Phase::Exited,
            budget: Budget::default(),
            last_exit: None,
        }
    }

    /// The state as users see it (`l`, `ctl status`).
    pub fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::Pending => "starting",
            Phase::Running { .. } => "running",
            Phase::Stopping { .. } => "stopping",
            Phase::Backoff { .. } => "backoff",
            Phase::Fatal => "fatal",
            Phase::Exited => match self.goal {
                Goal::Up => "exited",
                Goal::Down => "stopped",
                Goal::Removed => "removed",
            },
        }
    }

    /// The live child and its pid.
    pub fn child(&self) -> Option<(ChildId, i32, Instant)> {
        match self.phase {
            Phase::Running { child, pid, since } | Phase::Stopping { child, pid, since } => {
                Some((child, pid, since))
            }
            _ => None,
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child().map(|(_, pid, _)| pid)
    }

    /// Down for good: nothing will start it again without a request.
    pub fn settled(&self) -> bool {
        match self.phase {
            Phase::Fatal => true,
            Phase::Exited => self.goal != Goal::Down,
            _ => false,
        }
    }

    /// Apply `input` at time `now`; push the actions it calls for. Returns
    /// whether the input changed anything (a request that did nothing is
    /// not reported as done). `jitter` in [0, 1) spreads restart delays.
    pub fn step(
        &mut self,
        input: Input,
        policy: &Policy,
        now: Instant,
        jitter: f64,
        out: &mut Vec<Action>,
    ) -> bool {
        use Phase::*;
        match (input, self.phase) {
            (Input::Start, Exited | Fatal | Backoff { .. }) => self.fresh_start(out),
            (Input::Start, _) => false,

            (Input::Stop | Input::Shutdown, Running { child, pid, since }) => {
                self.goal = Goal::Down;
                self.phase = Stopping { child, pid, since };
                out.push(Action::StopChild(child));
                true
            }
            (Input::Stop | Input::Shutdown, Stopping { .. }) => {
                if self.goal == Goal::Up {
                    self.goal = Goal::Down;
                }
                true
            }
            (Input::Stop | Input::Shutdown, Pending | Backoff { .. }) => {
                if self.goal == Goal::Up {
                    self.goal = Goal::Down;
                }
                self.phase = Exited;
                true
            }
            // Down already: an exited instance keeps its "exited".
            (Input::Stop | Input::Shutdown, Exited | Fatal) => false,

            (Input::Restart, Running { child, pid, since }) => {
                self.goal = Goal::Up;
                self.phase = Stopping { child, pid, since };
                out.push(Action::StopChild(child));
                true
            }
            (Input::Restart, Stopping { .. }) => {
                self.goal = Goal::Up;
                true
            }
            (Input::Restart, Pending) => false,
            (Input::Restart, Backoff { .. } | Exited | Fatal) => self.fresh_start(out),

            (Input::Remove, Running { child, pid, since }) => {
                self.goal = Goal::Removed;
                self.phase = Stopping { child, pid, since };
                out.push(Action::StopChild(child));
                true
            }
            (Input::Remove, Stopping { .. }) => {
                self.goal = Goal::Removed;
                true
            }
            (Input::Remove, Pending | Backoff { .. } | Exited | Fatal) => {
                self.goal = Goal::Removed;
                self.phase = Exited;
                out.push(Action::Forget(self.id));
                true
            }

            (Input::Spawned { child, pid }, Pending) => {
                self.phase = Running {
                    child,
                    pid,
                    since: now,
                };
                true
            }
            (Input::Spawned { .. }, _) => false,

            (Input::SpawnFailed, Pending) => {
                self.ended(None, Duration::ZERO, false, policy, now, jitter, out)
            }
            (Input::SpawnFailed, _) => false,

            (Input::Exited { status, ran_for }, Running { .. }) => {
                self.ended(Some(status), ran_for, false, policy, now, jitter, out)
            }
            (Input::Exited { status, ran_for }, Stopping { .. }) => {
                self.ended(Some(status), ran_for, true, policy, now, jitter, out)
            }
            (Input::Exited { .. }, _) => false,

            (Input::BackoffOver, Backoff { until }) if until <= now && self.goal == Goal::Up => {
                self.phase = Pending;
                out.push(Action::Spawn(self.id));
                true
            }
            (Input::BackoffOver, _) => false,
        }
    }

    /// Start with no backoff carried over.
    fn fresh_start(&mut self, out: &mut Vec<Action>) -> bool {
        self.goal = Goal::Up;
        self.budget.reset();
        self.phase = Phase::Pending;
        out.push(Action::Spawn(self.id));
        true
    }

    /// The run ended (`status` None: it could not start). `stopped`: brood
    /// had asked it to stop, so the goal decides, not the restart policy.
    #[allow(clippy::too_many_arguments)]
    fn ended(
        &mut self,
        status: Option<ExitStatus>,
        ran_for: Duration,
        stopped: bool,
        policy: &Policy,
        now: Instant,
        jitter: f64,
        out: &mut Vec<Action>,
    ) -> bool {
        self.last_exit = status.or(self.last_exit);
        match self.goal {
            Goal::Removed => {
                self.phase = Phase::Exited;
                out.push(Action::Forget(self.id));
                return true;
            }
            Goal::Down => {
                self.phase = Phase::Exited;
                return true;
            }
            Goal::Up if stopped => return self.fresh_start(out),
            Goal::Up => {}
        }
        match policy::on_unrequested_exit(&mut self.budget, policy, status, ran_for, now, jitter) {
            Decision::Restart { delay, attempt } => {
                let until = now + delay;
                self.phase = Phase::Backoff { until };
                out.push(Action::Backoff(self.id, until));
                out.push(Action::Emit(Event::Restart {
                    label: self.label.clone(),
                    delay_ms: delay.as_millis() as u64,
                    attempt,
                }));
            }
            Decision::StayDown => self.phase = Phase::Exited,
            Decision::Fatal { reason } => {
                self.phase = Phase::Fatal;
                out.push(Action::Emit(Event::Fatal {
                    label: self.label.clone(),
                    reason,
                }));
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    //! Every (phase, input) pair, as a table: the phase and goal before,
    //! the input, and the phase, goal and actions after.
    use super::*;
    use crate::config::RestartPolicy;

    const CHILD: ChildId = ChildId(9);
    const PID: i32 = 4242;
    const ID: InstanceId = InstanceId(3);

    fn policy(restart: RestartPolicy) -> Policy {
        Policy {
            restart,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            max_restarts: 2,
            window: Duration::from_secs(60),
        }
    }

    /// Phases by short name, all at time `t0`.
    fn phase(name: &str, t0: Instant) -> Phase {
        match name {
            "pending" => Phase::Pending,
            "running" => Phase::Running {
                child: CHILD,
                pid: PID,
                since: t0,
            },
            "stopping" => Phase::Stopping {
                child: CHILD,
                pid: PID,
                since: t0,
            },
            "backoff" => Phase::Backoff { until: t0 },
            "exited" => Phase::Exited,
            "fatal" => Phase::Fatal,
            other => panic!("no phase {other}"),
        }
    }

    fn goal(name: &str) -> Goal {
        match name {
            "up" => Goal::Up,
            "down" => Goal::Down,
            "removed" => Goal::Removed,
            other => panic!("no goal {other}"),
        }
    }

    fn input(name: &str) -> Input {
        match name {
            "start" => Input::Start,
            "stop" => Input::Stop,
            "restart" => Input::Restart,
            "remove" => Input::Remove,
            "shutdown" => Input::Shutdown,
            "spawned" => Input::Spawned {
                child: CHILD,
                pid: PID,
            },
            "spawn_failed" => Input::SpawnFailed,
            "exit0" => Input::Exited {
                status: ExitStatus::Code(0),
                ran_for: Duration::from_secs(1),
            },
            "exit1" => Input::Exited {
                status: ExitStatus::Code(1),
                ran_for: Duration::from_secs(1),
            },
            "backoff_over" => Input::BackoffOver,
            other => panic!("no input {other}"),
        }
    }

    /// Actions by short name: spawn, stop, backoff, restart (event),
    /// fatal (event), forget.
    fn action_names(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .map(|a| match a {
                Action::Spawn(_) => "spawn",
                Action::StopChild(_) => "stop",
                Action::Backoff(..) => "backoff",
                Action::Emit(Event::Restart { .. }) => "restart",
                Action::Emit(Event::Fatal { .. }) => "fatal",
                Action::Emit(_) => "event",
                Action::Forget(_) => "forget",
            })
            .collect()
    }

    /// (phase, goal, input) -> (phase, goal, actions, changed)
    #[rustfmt::skip]
    const TABLE: &[(&str, &str, &str, &str, &str, &str, bool)] = &[
        // start: only a down instance comes up, with a fresh budget
        ("pending",  "up",   "start", "pending",  "up",   "", false),
        ("running",  "up",   "start", "running",  "up",   "", false),
        ("stopping", "down", "start", "stopping", "down", "", false),
        ("backoff",  "up",   "start", "pending",  "up",   "spawn", true),
        ("exited",   "down", "start", "pending",  "up",   "spawn", true),
        ("exited",   "up",   "start", "pending",  "up",   "spawn", true),
        ("fatal",    "up",   "start", "pending",  "up",   "spawn", true),
        // stop: down and kept down
        ("pending",  "up",   "stop", "exited",   "down", "", true),
        ("running",  "up",   "stop", "stopping", "down", "stop", true),
        ("stopping", "up",   "stop", "stopping", "down", "", true),
        ("stopping", "removed", "stop", "stopping", "removed", "", true),
        ("backoff",  "up",   "stop", "exited",   "down", "", true),
        ("exited",   "up",   "stop", "exited",   "up",   "", false),
        ("exited",   "down", "stop", "exited",   "down", "", false),
        ("fatal",    "up",   "stop", "fatal",    "up",   "", false),
        // shutdown: the same as stop, for every instance
        ("pending",  "up",   "shutdown", "exited",   "down", "", true),
        ("running",  "up",   "shutdown", "stopping", "down", "stop", true),
        ("stopping", "up",   "shutdown", "stopping", "down", "", true),
        ("backoff",  "up",   "shutdown", "exited",   "down", "", true),
        ("exited",   "up",   "shutdown", "exited",   "up",   "", false),
        ("fatal",    "up",   "shutdown", "fatal",    "up",   "", false),
        // restart: stop if up, then start again
        ("pending",  "up",   "restart", "pending",  "up", "", false),
        ("running",  "up",   "restart", "stopping", "up", "stop", true),
        ("stopping", "down", "restart", "stopping", "up", "", true),
        ("backoff",  "up",   "restart", "pending",  "up", "spawn", true),
        ("exited",   "down", "restart", "pending",  "up", "spawn", true),
        ("fatal",    "up",   "restart", "pending",  "up", "spawn", true),
        // remove: stop if up, then forget
        ("pending",  "up",   "remove", "exited",   "removed", "forget", true),
        ("running",  "up",   "remove", "stopping", "removed", "stop", true),
        ("stopping", "down", "remove", "stopping", "removed", "", true),
        ("backoff",  "up",   "remove", "exited",   "removed", "forget", true),
        ("exited",   "up",   "remove", "exited",   "removed", "forget", true),
        ("fatal",    "up",   "remove", "exited",   "removed", "forget", true),
        // spawned / spawn_failed answer a pending spawn only
        ("pending",  "up",   "spawned", "running", "up", "", true),
        ("running",  "up",   "spawned", "running", "up", "", false),
        ("exited",   "down", "spawned", "exited",  "down", "", false),
        ("pending",  "up",   "spawn_failed", "backoff", "up", "backoff,restart", true),
        ("pending",  "down", "spawn_failed", "exited",  "down", "", true),
        ("running",  "up",   "spawn_failed", "running", "up", "", false),
        // an exit nobody asked for: the policy decides (on-failure here)
        ("running",  "up",   "exit1", "backoff", "up", "backoff,restart", true),
        ("running",  "up",   "exit0", "exited",  "up", "", true),
        ("running",  "down", "exit1", "exited",  "down", "", true),
        ("running",  "removed", "exit1", "exited", "removed", "forget", true),
        // an exit brood asked for: the goal decides
        ("stopping", "up",   "exit1", "pending", "up",   "spawn", true),
        ("stopping", "down", "exit1", "exited",  "down", "", true),
        ("stopping", "removed", "exit0", "exited", "removed", "forget", true),
        // exits of nothing running are ignored
        ("pending",  "up",   "exit1", "pending", "up", "", false),
        ("backoff",  "up",   "exit1", "backoff", "up", "", false),
        ("exited",   "up",   "exit1", "exited",  "up", "", false),
        ("fatal",    "up",   "exit1", "fatal",   "up", "", false),
        // the backoff timer starts a waiting instance, nothing else
        ("backoff",  "up",   "backoff_over", "pending", "up",   "spawn", true),
        ("backoff",  "down", "backoff_over", "backoff", "down", "", false),
        ("running",  "up",   "backoff_over", "running", "up",   "", false),
        ("exited",   "up",   "backoff_over", "exited",  "up",   "", false),
    ];

    #[test]
    fn every_transition_in_the_table() {
        let t0 = Instant::now();
        let p = policy(RestartPolicy::OnFailure);
        for &(before, g, inp, after, g_after, actions, changed) in TABLE {
            let mut inst = Instance::new(ID, ProgramId(0), 1, "w.1".into());
            inst.phase = phase(before, t0);
            inst.goal = goal(g);
            let mut out = Vec::new();
            let did = inst.step(input(inp), &p, t0, 0.5, &mut out);
            let case = format!("{before}/{g} + {inp}");
            let mut want = phase(after, t0);
            if let (Phase::Running { .. }, "spawned") = (want, inp) {
                want = Phase::Running {
                    child: CHILD,
                    pid: PID,
                    since: t0,
                };
            }
            if let Phase::Backoff { .. } = want {
                // The delay is the policy's business; only the kind matters.
                assert!(
                    matches!(inst.phase, Phase::Backoff { .. }),
                    "{case}: {:?}",
                    inst.phase
                );
            } else {
                assert_eq!(inst.phase, want, "{case}: phase");
            }
            assert_eq!(inst.goal, goal(g_after), "{case}: goal");
            let want_actions: Vec<&str> = actions.split(',').filter(|s| !s.is_empty()).collect();
            assert_eq!(action_names(&out), want_actions, "{case}: actions");
            assert_eq!(did, changed, "{case}: changed");
        }
    }

    #[test]
    fn the_table_covers_every_phase_and_input() {
        let phases = ["pending", "running", "stopping", "backoff", "exited", "fatal"];
        let inputs = [
            "start",
            "stop",
            "restart",
            "remove",
            "shutdown",
            "spawned",
            "spawn_failed",
            "exit1",
            "backoff_over",
        ];
        for i in inputs {
            let covered: Vec<&str> = TABLE.iter().filter(|r| r.2 == i).map(|r| r.0).collect();
            // Each input is tested from every phase it can meet, or from
            // enough to show it is ignored elsewhere.
            assert!(covered.len() >= 3, "input {i} covered from {covered:?}");
        }
        for p in phases {
            assert!(TABLE.iter().any(|r| r.0 == p), "phase {p}");
        }
    }

    #[test]
    fn a_crash_loop_goes_fatal_past_its_budget() {
        let t0 = Instant::now();
        let p = policy(RestartPolicy::Always);
        let mut inst = Instance::new(ID, ProgramId(0), 1, "w.1".into());
        let mut out = Vec::new();
        assert!(inst.step(Input::Start, &p, t0, 0.0, &mut out));
        for round in 0..3 {
            inst.step(
                Input::Spawned {
                    child: CHILD,
                    pid: PID,
                },
                &p,
                t0,
                0.0,
                &mut out,
            );
            let exit = Input::Exited {
                status: ExitStatus::Code(3),
                ran_for: Duration::ZERO,
            };
            inst.step(exit, &p, t0, 0.0, &mut out);
            if round < 2 {
                let Phase::Backoff { until } = inst.phase else {
                    panic!("round {round}: {:?}", inst.phase)
                };
                inst.step(Input::BackoffOver, &p, until, 0.0, &mut out);
                assert_eq!(inst.phase, Phase::Pending);
            }
        }
        assert_eq!(inst.phase, Phase::Fatal);
        assert_eq!(inst.state_name(), "fatal");
        assert_eq!(inst.last_exit, Some(ExitStatus::Code(3)));
        assert!(inst.settled());
        assert!(out.iter().any(|a| matches!(a, Action::Emit(Event::Fatal { .. }))));
    }

    #[test]
    fn a_user_restart_starts_with_a_fresh_budget() {
        let t0 = Instant::now();
        let p = policy(RestartPolicy::Always);
        let mut inst = Instance::new(ID, ProgramId(0), 1, "w.1".into());
        inst.budget.attempt = 5;
        inst.phase = phase("running", t0);
        let mut out = Vec::new();
        inst.step(Input::Restart, &p, t0, 0.0, &mut out);
        assert_eq!(inst.state_name(), "stopping");
        let exit = Input::Exited {
            status: ExitStatus::Signal {
                signal: libc::SIGTERM,
                core: false,
            },
            ran_for: Duration::ZERO,
        };
        inst.step(exit, &p, t0, 0.0, &mut out);
        assert_eq!(inst.phase, Phase::Pending);
        assert_eq!(inst.budget.attempt, 0);
    }

    #[test]
    fn state_names_tell_stopped_from_exited() {
        let mut inst = Instance::new(ID, ProgramId(0), 1, "w.1".into());
        assert_eq!(inst.state_name(), "exited");
        inst.goal = Goal::Down;
        assert_eq!(inst.state_name(), "stopped");
        assert!(!inst.settled(), "a stopped instance waits for a start");
    }
}
