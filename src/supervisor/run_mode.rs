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

    /// Every instance is down for good. Instances scaled away do not
    /// count: when all are, brood waits for a scale up.
    pub fn all_settled(&self) -> bool {
        self.slots.iter().all(Slot::settled) && self.slots.iter().any(|s| s.phase != Phase::Retired)
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
            .filter(|(_, s)| s.phase != Phase::Retired)
            .filter(|(_, s)| {
                s.label == target || names[s.program] == target || pid.is_some_and(|p| slot_pid(s) == Some(p))
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// Make a down instance start again on the next loop turn, with a fresh
/// backoff.
fn revive(slot: &mut Slot) {
    slot.attempt = 0;
    slot.recent_restarts.clear();
    slot.phase = Phase::Starting;
}

pub(super) fn slot_pid(s: &Slot) -> Option<i32> {
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
        let jitter = r.jitter.sample();
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
                AfterStop::Retire => Phase::Retired,
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

    fn targets(&mut self, target: &str) -> Result<Vec<usize>, String> {
        let names = self.program_names();
        let Some(r) = self.run_state() else {
            return Err("not in run mode".into());
        };
        let hits = r.matching(target, &names);
        if hits.is_empty() {
            return Err(format!("no program or instance '{target}'"));
        }
        Ok(hits)
    }

    fn label_of(&self, i: usize) -> String {
        match &self.mode {
            Mode::Run(r) => r.slots[i].label.clone(),
            Mode::Spawn(_) => String::new(),
        }
    }

    /// Stop matching instances and keep them down (console `k`, ctl stop).
    pub(super) fn stop_instances(&mut self, target: &str) -> Result<Vec<String>, String> {
        let mut done = Vec::new();
        for i in self.targets(target)? {
            let Some(r) = self.run_state() else { break };
            match r.slots[i].phase {
                Phase::Running { .. } | Phase::Stopping { .. } => self.stop_slot(i, AfterStop::Hold),
                Phase::Starting | Phase::Backoff { .. } => r.slots[i].phase = Phase::Held,
                _ => continue,
            }
            done.push(self.label_of(i));
        }
        Ok(done)
    }

    /// Stop matching instances if they are up and start them again
    /// (console `r`, ctl restart).
    pub(super) fn restart_instances(&mut self, target: &str) -> Result<Vec<String>, String> {
        let mut done = Vec::new();
        for i in self.targets(target)? {
            let Some(r) = self.run_state() else { break };
            match r.slots[i].phase {
                Phase::Running { .. } | Phase::Stopping { .. } => self.stop_slot(i, AfterStop::Restart),
                _ => revive(&mut r.slots[i]),
            }
            done.push(self.label_of(i));
        }
        self.start_due_slots(Instant::now());
        Ok(done)
    }

    /// Start matching instances that are down (ctl start).
    pub(super) fn start_instances(&mut self, target: &str) -> Result<Vec<String>, String> {
        let mut done = Vec::new();
        for i in self.targets(target)? {
            let Some(r) = self.run_state() else { break };
            if matches!(
                r.slots[i].phase,
                Phase::Held | Phase::Done | Phase::Fatal | Phase::Backoff { .. }
            ) {
                revive(&mut r.slots[i]);
                done.push(self.label_of(i));
            }
        }
        self.start_due_slots(Instant::now());
        Ok(done)
    }

    /// Send `sig` to the process group of every matching running instance.
    pub(super) fn signal_instances(&mut self, target: &str, sig: i32) -> Result<Vec<String>, String> {
        let mut done = Vec::new();
        for i in self.targets(target)? {
            let Some(r) = self.run_state() else { break };
            if let Some(pid) = slot_pid(&r.slots[i]) {
                let label = r.slots[i].label.clone();
                if children::signal_group(pid, sig) {
                    let name = crate::signals::name(sig);
                    self.events
                        .emit("signal", json!({"label": label, "pid": pid, "signal": name}));
                    done.push(label);
                }
            }
        }
        Ok(done)
    }

    /// Change the number of instances of a program at run time.
    pub(super) fn scale(&mut self, name: &str, count: u32) -> Result<(), String> {
        let Some(program) = self.programs.iter().position(|p| p.name == name) else {
            return Err(format!("no program '{name}'"));
        };
        let shutting_down = self.shutdown.is_some();
        let Some(r) = self.run_state() else {
            return Err("not in run mode".into());
        };
        if shutting_down {
            return Err("shutting down".into());
        }
        let count = u64::from(count);
        let mut stop = Vec::new();
        for (i, slot) in r
            .slots
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| s.program == program)
        {
            if slot.instance <= count {
                if slot.phase == Phase::Retired {
                    revive(slot);
                }
            } else if matches!(slot.phase, Phase::Running { .. } | Phase::Stopping { .. }) {
                stop.push(i);
            } else {
                slot.phase = Phase::Retired;
            }
        }
        let have = r
            .slots
            .iter()
            .filter(|s| s.program == program)
            .map(|s| s.instance)
            .max()
            .unwrap_or(0);
        for instance in have + 1..=count {
            r.slots
                .push(Slot::new(program, instance, format!("{name}.{instance}")));
        }
        self.width = self.width.max(name.len() + 1 + count.to_string().len());
        for i in stop {
            self.stop_slot(i, AfterStop::Retire);
        }
        log::info!("scaled {name} to {count}");
        self.start_due_slots(Instant::now());
        Ok(())
    }

    /// Console `k` in run mode.
    pub(super) fn kill_target(&mut self, target: &str) {
        match self.stop_instances(target) {
            Ok(labels) if labels.is_empty() => self.say(&format!("'{target}' is not running")),
            Ok(labels) => self.say(&format!("stopping {}", labels.join(", "))),
            Err(e) => self.say(&format!("{e} (l lists them)")),
        }
    }

    /// Console `r` in run mode.
    pub(super) fn restart_target(&mut self, target: &str) {
        match self.restart_instances(target) {
            Ok(labels) => self.say(&format!("restarting {}", labels.join(", "))),
            Err(e) => self.say(&format!("{e} (l lists them)")),
        }
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
        for s in r.slots.iter().filter(|s| s.phase != Phase::Retired) {
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
