//! `brood run`: instances of configured programs, kept up by their restart
//! policy. The decisions live in `policy`; this file applies them to the
//! process table and reports them.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{Mode, Supervisor};
use crate::children;
use crate::policy::{self, AfterStop, Decision, Jitter, Phase, Policy, Slot};
use crate::reaper::ExitStatus;

pub struct RunState {
    pub slots: Vec<Slot>,
    /// One per program, by program index.
    pub policies: Vec<Policy>,
    jitter: Jitter,
    /// The shutdown was asked for (console, signal, EOF), not "done".
    requested: bool,
}

impl RunState {
    pub fn new(policies: Vec<Policy>, slots: Vec<Slot>) -> RunState {
        RunState {
            slots,
            policies,
            jitter: Jitter::seeded(),
            requested: false,
        }
    }

    pub fn all_settled(&self) -> bool {
        self.slots.iter().all(Slot::settled)
    }

    /// Shutdown: nothing starts any more.
    pub fn on_shutdown(&mut self, requested: bool) {
        self.requested = requested;
        for slot in &mut self.slots {
            if matches!(slot.phase, Phase::Starting | Phase::Backoff { .. } | Phase::Held) {
                slot.phase = Phase::Done;
            }
        }
    }

    pub fn next_start(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| match s.phase {
                Phase::Backoff { until } => Some(until),
                _ => None,
            })
            .min()
    }

    /// 0 after a requested shutdown with no fatal program, or when every
    /// instance ended on its own with success; 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.slots.iter().any(|s| s.phase == Phase::Fatal) {
            return 1;
        }
        if self.requested {
            return 0;
        }
        let clean = self.slots.iter().all(|s| s.last_exit.is_none_or(|e| e.success()));
        i32::from(!clean)
    }

    fn matching(&self, target: &str, names: &[String]) -> Vec<usize> {
        let pid: Option<i32> = target.parse().ok();
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.label == target || names[s.program] == target || pid.is_some_and(|p| slot_pid(s) == Some(p))
            })
            .map(|(i, _)| i)
            .collect()
    }
}

fn slot_pid(s: &Slot) -> Option<i32> {
    match s.phase {
        Phase::Running { pid, .. } | Phase::Stopping { pid, .. } => Some(pid),
        _ => None,
    }
}

impl Supervisor {
    fn run_state(&mut self) -> Option<&mut RunState> {
        match &mut self.mode {
            Mode::Run(r) => Some(r),
            Mode::Spawn(_) => None,
        }
    }

    /// Start every instance that is due: new ones and finished backoffs.
    pub(super) fn start_due_slots(&mut self, now: Instant) {
        let Some(r) = self.run_state() else { return };
        let due: Vec<usize> = r
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| match s.phase {
                Phase::Starting => true,
                Phase::Backoff { until } => until <= now,
                _ => false,
            })
            .map(|(i, _)| i)
            .collect();
        for i in due {
            let Some(r) = self.run_state() else { return };
            let (program, instance) = (r.slots[i].program, r.slots[i].instance);
            match self.spawn_one(program, instance, Some(i)) {
                Some(id) => {
                    let pid = self.children.get(&id).map_or(0, |c| c.pid);
                    if let Some(r) = self.run_state() {
                        r.slots[i].phase = Phase::Running {
                            child: id,
                            pid,
                            since: now,
                        };
                    }
                }
                None => self.on_slot_exit(i, None, Duration::ZERO, false),
            }
        }
    }

    /// An instance's child exited (`status`), or could not start (None).
    pub(super) fn on_slot_exit(
        &mut self,
        i: usize,
        status: Option<ExitStatus>,
        ran_for: Duration,
        stop_requested: bool,
    ) {
        let shutting_down = self.shutdown.is_some();
        let now = Instant::now();
        let Some(r) = self.run_state() else { return };
        let policy = r.policies[r.slots[i].program].clone();
        let jitter = r.jitter.next();
        let slot = &mut r.slots[i];
        slot.last_exit = status.or(slot.last_exit);
        let then = match slot.phase {
            Phase::Stopping { then, .. } => Some(then),
            _ if stop_requested || shutting_down => Some(AfterStop::Shutdown),
            _ => None,
        };
        if let Some(then) = then {
            slot.phase = match then {
                _ if shutting_down => Phase::Done,
                AfterStop::Hold => Phase::Held,
                AfterStop::Restart => {
                    slot.attempt = 0;
                    slot.recent_restarts.clear();
                    Phase::Starting
                }
                AfterStop::Shutdown => Phase::Done,
            };
            return;
        }
        let label = slot.label.clone();
        match policy::on_unrequested_exit(slot, &policy, status, ran_for, now, jitter) {
            Decision::Restart { delay, attempt } => {
                slot.phase = Phase::Backoff { until: now + delay };
                let ms = delay.as_millis() as u64;
                log::info!("{label} restarting in {ms}ms (attempt {attempt})");
                self.events.emit(
                    "restart",
                    json!({"label": label, "delay_ms": ms, "attempt": attempt}),
                );
            }
            Decision::StayDown => slot.phase = Phase::Done,
            Decision::Fatal { reason } => {
                slot.phase = Phase::Fatal;
                log::error!("{label} is fatal: {reason}; not restarting it");
                self.events
                    .emit("fatal", json!({"label": label, "reason": reason}));
            }
        }
    }

    fn stop_slot(&mut self, i: usize, then: AfterStop) {
        let Some(r) = self.run_state() else { return };
        let slot = &mut r.slots[i];
        match slot.phase {
            Phase::Running { child, pid, since } => {
                slot.phase = Phase::Stopping {
                    child,
                    pid,
                    since,
                    then,
                };
                let grace = self.grace_for(self.programs_index(i));
                self.stop_child(child, grace);
            }
            Phase::Stopping {
                child, pid, since, ..
            } => {
                slot.phase = Phase::Stopping {
                    child,
                    pid,
                    since,
                    then,
                };
            }
            _ => {}
        }
    }

    fn programs_index(&self, i: usize) -> usize {
        match &self.mode {
            Mode::Run(r) => r.slots[i].program,
            Mode::Spawn(_) => 0,
        }
    }

    fn program_names(&self) -> Vec<String> {
        self.programs.iter().map(|p| p.name.clone()).collect()
    }

    /// Console `k`: stop matching instances and keep them down.
    pub(super) fn kill_target(&mut self, target: &str) {
        let names = self.program_names();
        let Some(r) = self.run_state() else { return };
        let hits = r.matching(target, &names);
        if hits.is_empty() {
            self.say(&format!("no program or instance '{target}' (l lists them)"));
            return;
        }
        for i in hits {
            let Some(r) = self.run_state() else { return };
            let label = r.slots[i].label.clone();
            match r.slots[i].phase {
                Phase::Running { .. } | Phase::Stopping { .. } => {
                    self.say(&format!("stopping {label}"));
                    self.stop_slot(i, AfterStop::Hold);
                }
                Phase::Starting | Phase::Backoff { .. } => {
                    r.slots[i].phase = Phase::Held;
                    self.say(&format!("{label} will stay down"));
                }
                Phase::Held | Phase::Done | Phase::Fatal => self.say(&format!("{label} is not running")),
            }
        }
    }

    /// Console `r`: stop matching instances (if up) and start them again.
    pub(super) fn restart_target(&mut self, target: &str) {
        let names = self.program_names();
        let Some(r) = self.run_state() else { return };
        let hits = r.matching(target, &names);
        if hits.is_empty() {
            self.say(&format!("no program or instance '{target}' (l lists them)"));
            return;
        }
        for i in hits {
            let Some(r) = self.run_state() else { return };
            let label = r.slots[i].label.clone();
            self.say(&format!("restarting {label}"));
            let Some(r) = self.run_state() else { return };
            match r.slots[i].phase {
                Phase::Running { .. } | Phase::Stopping { .. } => self.stop_slot(i, AfterStop::Restart),
                _ => {
                    let slot = &mut r.slots[i];
                    slot.attempt = 0;
                    slot.recent_restarts.clear();
                    slot.phase = Phase::Starting;
                }
            }
        }
        self.start_due_slots(Instant::now());
    }

    /// Console `l` in run mode: every instance, up or not.
    pub(super) fn list_slots(&mut self) {
        let now = Instant::now();
        let Mode::Run(r) = &self.mode else { return };
        let w = r.slots.iter().map(|s| s.label.len()).max().unwrap_or(5).max(5);
        let mut text = format!(
            "{:<w$}  {:>7}  {:<8}  {:>7}  {:>8}  LAST EXIT\n",
            "LABEL", "PID", "STATE", "UPTIME", "RESTARTS"
        );
        for s in &r.slots {
            let (pid, uptime) = match s.phase {
                Phase::Running { pid, since, .. } | Phase::Stopping { pid, since, .. } => (
                    pid.to_string(),
                    children::human_duration(now.saturating_duration_since(since)),
                ),
                _ => ("-".to_string(), "-".to_string()),
            };
            let last = s.last_exit.map_or("-".to_string(), |e| e.describe());
            text.push_str(&format!(
                "{:<w$}  {:>7}  {:<8}  {:>7}  {:>8}  {}\n",
                s.label,
                pid,
                s.phase.name(),
                uptime,
                s.restarts,
                last
            ));
        }
        self.say(&text);
    }
}
