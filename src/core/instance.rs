//! One instance of a program (`web.2`): what brood wants of it (its goal)
//! kept apart from what brood has seen of it (its phase), as s6-supervise
//! keeps `flagwantup` beside `state`. Every change goes through
//! [`Instance::step`], a pure function of (state, input, time) that returns
//! actions for the loop to execute.

use std::time::{Duration, Instant};

use super::event::{Event, ShutdownReason};
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
    /// Wanted up, but a dependency's condition does not hold yet.
    Waiting,
    /// Wanted up, but a dependency's condition can no longer hold; only a
    /// request (`ctl start`) tries again.
    Blocked,
    Running {
        child: ChildId,
        pid: i32,
        since: Instant,
        /// Passed its readiness check (at once, without one).
        ready: bool,
    },
    /// The stop signal was sent; SIGKILL follows after the grace.
    Stopping {
        child: ChildId,
        pid: i32,
        since: Instant,
        why: StopWhy,
    },
    /// Waiting out the restart delay.
    Backoff { until: Instant },
    /// Not running, and nothing starts it again without a request.
    Exited,
    /// Failed more than its restart budget allows.
    Fatal,
}

/// Why brood is stopping a running instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopWhy {
    /// Someone asked (a user, shutdown, a scale, a strategy): the goal
    /// decides what follows.
    Asked,
    /// It was not ready in time: a failed start, for its restart policy.
    ReadyTimeout,
    /// Its health checks failed: a failure, for its restart policy.
    Unhealthy,
}

/// What readiness check passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadyBy {
    Notify,
    Fd,
    Log,
    Tcp,
    Http,
    Exec,
}

impl ReadyBy {
    pub fn word(self) -> &'static str {
        match self {
            ReadyBy::Notify => "notify",
            ReadyBy::Fd => "fd",
            ReadyBy::Log => "log",
            ReadyBy::Tcp => "tcp",
            ReadyBy::Http => "http",
            ReadyBy::Exec => "exec",
        }
    }
}

/// What happened to the instance, or what was asked of it.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// Its readiness check passed.
    Ready(ReadyBy),
    /// Its readiness timeout passed first.
    ReadyTimeout,
    /// One health check's result (`Err`: why it failed).
    Health(Result<(), String>),
    /// `STATUS=` from sd_notify.
    NotifyStatus(String),
    /// A strategy restarts it: stop it if it runs, then start it again when
    /// its dependencies allow.
    Requeue,
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
    /// End the run (a `shutdown_on` program ended, or an escalation).
    Shutdown(ShutdownReason),
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
    /// Has exec'd, since it was last (re)queued: `started` holds for it.
    pub started_once: bool,
    /// Has been ready, since it was last (re)queued: `ready` holds for it.
    pub ready_once: bool,
    /// Health checks failed in a row.
    pub health_failures: u32,
    /// The last health check's failure, while it is failing.
    pub health_error: Option<String>,
    /// The last `STATUS=` it sent.
    pub notify_status: Option<String>,
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
            started_once: false,
            ready_once: false,
            health_failures: 0,
            health_error: None,
            notify_status: None,
        }
    }

    /// The state as users see it (`l`, `ctl status`).
    pub fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::Pending => "starting",
            Phase::Waiting => "waiting",
            Phase::Blocked => "blocked",
            Phase::Running { ready: false, .. } => "starting",
            Phase::Running { ready: true, .. } => "running",
            Phase::Stopping {
                why: StopWhy::Unhealthy,
                ..
            } => "unhealthy",
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
            Phase::Running {
                child, pid, since, ..
            }
            | Phase::Stopping {
                child, pid, since, ..
            } => Some((child, pid, since)),
            _ => None,
        }
    }

    /// A process exists or is about to: its dependents must end first at
    /// shutdown.
    pub fn live(&self) -> bool {
        matches!(
            self.phase,
            Phase::Pending | Phase::Running { .. } | Phase::Stopping { .. }
        )
    }

    pub fn pid(&self) -> Option<i32> {
        self.child().map(|(_, pid, _)| pid)
    }

    /// Down for good: nothing will start it again without a request.
    pub fn settled(&self) -> bool {
        match self.phase {
            Phase::Fatal | Phase::Blocked => true,
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
            (Input::Start, Exited | Fatal | Backoff { .. } | Blocked) => self.fresh_start(out),
            (Input::Start, _) => false,

            (
                Input::Stop | Input::Shutdown,
                Running {
                    child, pid, since, ..
                },
            ) => {
                self.goal = Goal::Down;
                self.stop(child, pid, since, StopWhy::Asked, out);
                true
            }
            (Input::Stop | Input::Shutdown, Stopping { .. }) => {
                if self.goal == Goal::Up {
                    self.goal = Goal::Down;
                }
                true
            }
            (Input::Stop | Input::Shutdown, Pending | Backoff { .. } | Waiting | Blocked) => {
                if self.goal == Goal::Up {
                    self.goal = Goal::Down;
                }
                self.phase = Exited;
                true
            }
            // Down already: an exited instance keeps its "exited".
            (Input::Stop | Input::Shutdown, Exited | Fatal) => false,

            // A strategy's restart: what runs is stopped and comes back;
            // a finished one-shot runs again; a backoff, a fatal or blocked
            // instance and one the user stopped are left as they are.
            (
                Input::Requeue,
                Running {
                    child, pid, since, ..
                },
            ) => {
                self.goal = Goal::Up;
                self.stop(child, pid, since, StopWhy::Asked, out);
                true
            }
            (Input::Requeue, Exited) if self.goal == Goal::Up => self.fresh_start(out),
            (Input::Requeue, _) => false,

            (
                Input::Restart,
                Running {
                    child, pid, since, ..
                },
            ) => {
                self.goal = Goal::Up;
                self.stop(child, pid, since, StopWhy::Asked, out);
                true
            }
            (
                Input::Restart,
                Stopping {
                    child, pid, since, ..
                },
            ) => {
                self.goal = Goal::Up;
                // A failing instance asked to restart restarts afresh.
                self.phase = Stopping {
                    child,
                    pid,
                    since,
                    why: StopWhy::Asked,
                };
                true
            }
            (Input::Restart, Pending | Waiting) => false,
            (Input::Restart, Backoff { .. } | Exited | Fatal | Blocked) => self.fresh_start(out),

            (
                Input::Remove,
                Running {
                    child, pid, since, ..
                },
            ) => {
                self.goal = Goal::Removed;
                self.stop(child, pid, since, StopWhy::Asked, out);
                true
            }
            (Input::Remove, Stopping { .. }) => {
                self.goal = Goal::Removed;
                true
            }
            (Input::Remove, Pending | Waiting | Blocked | Backoff { .. } | Exited | Fatal) => {
                self.goal = Goal::Removed;
                self.phase = Exited;
                out.push(Action::Forget(self.id));
                true
            }

            (Input::Spawned { child, pid }, Pending) => {
                let ready = !policy.ready_check;
                self.phase = Running {
                    child,
                    pid,
                    since: now,
                    ready,
                };
                self.started_once = true;
                self.ready_once |= ready;
                self.health_failures = 0;
                self.health_error = None;
                self.notify_status = None;
                true
            }
            (Input::Spawned { .. }, _) => false,

            (Input::SpawnFailed, Pending) => self.ended(None, Duration::ZERO, None, policy, now, jitter, out),
            (Input::SpawnFailed, _) => false,

            (Input::Exited { status, ran_for }, Running { .. }) => {
                self.ended(Some(status), ran_for, None, policy, now, jitter, out)
            }
            (Input::Exited { status, ran_for }, Stopping { why, .. }) => {
                self.ended(Some(status), ran_for, Some(why), policy, now, jitter, out)
            }
            (Input::Exited { .. }, _) => false,

            (Input::BackoffOver, Backoff { until }) if until <= now && self.goal == Goal::Up => {
                self.phase = Pending;
                out.push(Action::Spawn(self.id));
                true
            }
            (Input::BackoffOver, _) => false,

            (
                Input::Ready(by),
                Running {
                    child,
                    pid,
                    since,
                    ready: false,
                },
            ) => {
                self.phase = Running {
                    child,
                    pid,
                    since,
                    ready: true,
                };
                self.ready_once = true;
                out.push(Action::Emit(Event::Ready {
                    label: self.label.clone(),
                    pid,
                    by,
                    after_ms: now.saturating_duration_since(since).as_millis() as u64,
                }));
                true
            }
            (Input::Ready(_), _) => false,

            (
                Input::ReadyTimeout,
                Running {
                    child,
                    pid,
                    since,
                    ready: false,
                },
            ) => {
                out.push(Action::Emit(Event::ReadyTimeout {
                    label: self.label.clone(),
                    pid,
                    reason: format!(
                        "not ready within {}",
                        crate::core::status::human_duration(now.saturating_duration_since(since))
                    ),
                }));
                self.stop(child, pid, since, StopWhy::ReadyTimeout, out);
                true
            }
            (Input::ReadyTimeout, _) => false,

            (
                Input::Health(result),
                Running {
                    child,
                    pid,
                    since,
                    ready: true,
                },
            ) => match result {
                Ok(()) => {
                    let changed = self.health_failures > 0;
                    self.health_failures = 0;
                    self.health_error = None;
                    changed
                }
                Err(reason) => {
                    self.health_failures += 1;
                    self.health_error = Some(reason.clone());
                    if self.health_failures >= policy.health_failures.max(1) {
                        out.push(Action::Emit(Event::Unhealthy {
                            label: self.label.clone(),
                            pid,
                            reason: format!(
                                "{} failed health checks in a row: {reason}",
                                self.health_failures
                            ),
                        }));
                        self.stop(child, pid, since, StopWhy::Unhealthy, out);
                    }
                    true
                }
            },
            (Input::Health(_), _) => false,

            (Input::NotifyStatus(text), Running { .. } | Stopping { .. }) => {
                self.notify_status = Some(text);
                true
            }
            (Input::NotifyStatus(_), _) => false,
        }
    }

    fn stop(&mut self, child: ChildId, pid: i32, since: Instant, why: StopWhy, out: &mut Vec<Action>) {
        self.phase = Phase::Stopping {
            child,
            pid,
            since,
            why,
        };
        out.push(Action::StopChild(child));
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
    /// had stopped it, and why: when asked, the goal decides; after a
    /// failed readiness or health check, the restart policy, as a failure.
    #[allow(clippy::too_many_arguments)]
    fn ended(
        &mut self,
        status: Option<ExitStatus>,
        ran_for: Duration,
        stopped: Option<StopWhy>,
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
            Goal::Up if stopped == Some(StopWhy::Asked) => return self.fresh_start(out),
            Goal::Up => {}
        }
        let forced = stopped.is_some();
        match policy::on_unrequested_exit(&mut self.budget, policy, status, forced, ran_for, now, jitter) {
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
            ready_check: false,
            health_check: false,
            health_failures: 2,
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
                ready: true,
            },
            "unready" => Phase::Running {
                child: CHILD,
                pid: PID,
                since: t0,
                ready: false,
            },
            "stopping" => Phase::Stopping {
                child: CHILD,
                pid: PID,
                since: t0,
                why: StopWhy::Asked,
            },
            "timed_out" => Phase::Stopping {
                child: CHILD,
                pid: PID,
                since: t0,
                why: StopWhy::ReadyTimeout,
            },
            "unhealthy" => Phase::Stopping {
                child: CHILD,
                pid: PID,
                since: t0,
                why: StopWhy::Unhealthy,
            },
            "waiting" => Phase::Waiting,
            "blocked" => Phase::Blocked,
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
            "ready" => Input::Ready(ReadyBy::Tcp),
            "ready_timeout" => Input::ReadyTimeout,
            "health_ok" => Input::Health(Ok(())),
            "health_bad" => Input::Health(Err("refused".into())),
            "requeue" => Input::Requeue,
            "status" => Input::NotifyStatus("warming up".into()),
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
                Action::Emit(Event::Ready { .. }) => "ready",
                Action::Emit(Event::ReadyTimeout { .. }) => "ready_timeout",
                Action::Emit(Event::Unhealthy { .. }) => "unhealthy",
                Action::Emit(_) => "event",
                Action::Forget(_) => "forget",
                Action::Shutdown(_) => "shutdown",
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
        // waiting for dependencies, or blocked by them
        ("waiting",  "up",   "start",    "waiting", "up",   "", false),
        ("waiting",  "up",   "stop",     "exited",  "down", "", true),
        ("waiting",  "up",   "shutdown", "exited",  "down", "", true),
        ("waiting",  "up",   "restart",  "waiting", "up",   "", false),
        ("waiting",  "up",   "remove",   "exited",  "removed", "forget", true),
        ("waiting",  "up",   "exit1",    "waiting", "up",   "", false),
        ("blocked",  "up",   "start",    "pending", "up",   "spawn", true),
        ("blocked",  "up",   "restart",  "pending", "up",   "spawn", true),
        ("blocked",  "up",   "stop",     "exited",  "down", "", true),
        ("blocked",  "up",   "requeue",  "blocked", "up",   "", false),
        // readiness
        ("unready",  "up",   "ready",         "running",   "up", "ready", true),
        ("running",  "up",   "ready",         "running",   "up", "", false),
        ("pending",  "up",   "ready",         "pending",   "up", "", false),
        ("unready",  "up",   "ready_timeout", "timed_out", "up", "ready_timeout,stop", true),
        ("running",  "up",   "ready_timeout", "running",   "up", "", false),
        ("exited",   "up",   "ready_timeout", "exited",    "up", "", false),
        ("timed_out", "up",  "exit0",         "backoff",   "up", "backoff,restart", true),
        ("timed_out", "down", "exit0",        "exited",    "down", "", true),
        ("timed_out", "up",  "restart",       "stopping",  "up", "", true),
        // health (threshold 2 here): one failure counts, two stop it
        ("running",  "up",   "health_ok",  "running",   "up", "", false),
        ("running",  "up",   "health_bad", "running",   "up", "", true),
        ("unready",  "up",   "health_bad", "unready",   "up", "", false),
        ("exited",   "up",   "health_bad", "exited",    "up", "", false),
        ("unhealthy", "up",  "exit1",      "backoff",   "up", "backoff,restart", true),
        // a strategy's requeue
        ("running",  "up",   "requeue", "stopping", "up", "stop", true),
        ("exited",   "up",   "requeue", "pending",  "up", "spawn", true),
        ("exited",   "down", "requeue", "exited",   "down", "", false),
        ("backoff",  "up",   "requeue", "backoff",  "up", "", false),
        ("fatal",    "up",   "requeue", "fatal",    "up", "", false),
        ("stopping", "down", "requeue", "stopping", "down", "", false),
        // sd_notify STATUS=
        ("running",  "up",   "status",  "running",  "up", "", true),
        ("exited",   "up",   "status",  "exited",   "up", "", false),
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
            let want = phase(after, t0);
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
        let phases = [
            "pending",
            "waiting",
            "blocked",
            "running",
            "unready",
            "stopping",
            "timed_out",
            "unhealthy",
            "backoff",
            "exited",
            "fatal",
        ];
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
            "ready",
            "ready_timeout",
            "health_bad",
            "requeue",
            "status",
        ];
        for i in inputs {
            let covered: Vec<&str> = TABLE.iter().filter(|r| r.2 == i).map(|r| r.0).collect();
            // Each input is tested from every phase it can meet, or from
            // enough to show it is ignored elsewhere.
            assert!(covered.len() >= 2, "input {i} covered from {covered:?}");
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
