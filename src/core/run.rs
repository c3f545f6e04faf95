//! Every instance of a `brood run`, how they relate, and the requests that
//! reach many at once (a target naming a program, a scale, the shutdown).
//! Pure data: the loop feeds it inputs and executes the actions it returns.
//!
//! Beyond one instance's transitions (`instance`), this is where the
//! service graph lives (SPEC 13-14): a spawn is held back (`waiting`) until
//! the program's dependency conditions hold, or the program is `blocked`
//! when they can no longer hold; at shutdown a program is stopped only once
//! every program depending on it has ended; a failure restarts more than
//! one instance under the `one_for_all` and `rest_for_one` strategies; the
//! supervisor-wide budget escalates; `shutdown_on` ends the run.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::event::{Event, ShutdownReason};
use super::graph::{Condition, ShutdownOn, Strategy};
use super::ids::{Counter, InstanceId, ProgramId};
use super::instance::{Action, Goal, Input, Instance, Phase};
use super::policy::{Jitter, Policy};
use super::status::{InstanceStatus, LastExit};
use crate::reaper::ExitStatus;

/// What the core knows of a program.
#[derive(Clone, Debug)]
pub struct ProgramEntry {
    pub name: String,
    pub policy: Policy,
    /// Its dependencies and what it waits for in each.
    pub deps: Vec<(ProgramId, Condition)>,
    pub shutdown_on: ShutdownOn,
}

/// Supervisor-wide rules.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub strategy: Strategy,
    /// Restarts of all programs together within `window`; past it, escalate.
    pub max_restarts: Option<u32>,
    pub window: Duration,
    /// `--exit-with any`: the first exit of any instance ends the run.
    pub exit_with_any: bool,
}

/// Whether a program's dependencies let it start.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Gate {
    Open,
    Wait,
    /// A condition can no longer hold: why.
    Never(String),
}

pub struct RunCore {
    programs: BTreeMap<ProgramId, ProgramEntry>,
    /// Start order: dependencies first, then file order.
    order: Vec<ProgramId>,
    instances: BTreeMap<InstanceId, Instance>,
    ids: Counter,
    jitter: Jitter,
    rules: Rules,
    /// Policy restarts of every program, for the supervisor-wide budget.
    recent_restarts: VecDeque<Instant>,
    /// Set once shutdown began: whether someone asked for it.
    shutdown: Option<bool>,
    /// Blocked programs and the reason already reported.
    blocked: HashMap<ProgramId, String>,
    /// Stops waiting for the dependents of their program to end first
    /// (shutdown, a strategy's restarts, a reload's), and every program of
    /// the operation: a program waits only for dependents that are part of
    /// it.
    wave: Vec<(ProgramId, Input)>,
    wave_members: BTreeSet<ProgramId>,
    /// The run's exit status, once a `shutdown_on` program (or an
    /// escalation) decided it.
    exit_status: Option<i32>,
    /// Programs a reload removed: their instances stop and are forgotten.
    retired: BTreeSet<ProgramId>,
}

impl Fate {
    pub fn word(self) -> &'static str {
        match self {
            Fate::Unchanged => "unchanged",
            Fate::Restarted => "restarted",
            Fate::Started => "started",
            Fate::Stopped => "stopped",
            Fate::Scaled => "scaled",
        }
    }
}

/// What a reload does to a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// Same settings: its processes are left alone.
    Unchanged,
    /// New settings: stopped and started again with them.
    Restarted,
    /// New in the config.
    Started,
    /// Gone from the config: stopped and forgotten.
    Stopped,
    /// Only its number of instances changed.
    Scaled,
}

impl RunCore {
    /// Programs (any order) with their number of instances, and the start
    /// order (every id once).
    pub fn new(
        programs: Vec<(ProgramId, ProgramEntry, u64)>,
        order: Vec<ProgramId>,
        rules: Rules,
        jitter: Jitter,
    ) -> RunCore {
        let mut core = RunCore {
            programs: BTreeMap::new(),
            order,
            instances: BTreeMap::new(),
            ids: Counter::default(),
            jitter,
            rules,
            recent_restarts: VecDeque::new(),
            shutdown: None,
            blocked: HashMap::new(),
            wave: Vec::new(),
            wave_members: BTreeSet::new(),
            exit_status: None,
            retired: BTreeSet::new(),
        };
        let mut counts = HashMap::new();
        for (id, entry, count) in programs {
            counts.insert(id, count);
            core.programs.insert(id, entry);
        }
        for id in core.order.clone() {
            let Some(name) = core.programs.get(&id).map(|p| p.name.clone()) else {
                continue;
            };
            for n in 1..=counts.get(&id).copied().unwrap_or(0) {
                core.add_instance(id, &name, n);
            }
        }
        core
    }

    fn add_instance(&mut self, program: ProgramId, name: &str, n: u64) -> InstanceId {
        let id = InstanceId(self.ids.take());
        self.instances
            .insert(id, Instance::new(id, program, n, format!("{name}.{n}")));
        id
    }

    /// Start every instance (once, at the beginning of the run), in start
    /// order; those whose dependencies do not hold yet wait.
    pub fn start_all(&mut self, now: Instant, out: &mut Vec<Action>) {
        let ids: Vec<InstanceId> = self.instances.keys().copied().collect();
        for id in ids {
            self.apply(id, Input::Start, now, out);
        }
        self.settle(now, out);
    }

    /// Feed one input from the loop to one instance. False when the
    /// instance is gone or the input changed nothing.
    pub fn input(&mut self, id: InstanceId, input: Input, now: Instant, out: &mut Vec<Action>) -> bool {
        let before = out.len();
        let changed = self.apply(id, input, now, out);
        // Nothing changed (a passing health check, a late timer): nothing
        // else can have become due, and settling would walk every instance.
        if changed || out.len() != before {
            self.settle(now, out);
        }
        changed
    }

    /// One step of one instance, and what follows from its actions at once
    /// (gating spawns, forgetting, strategies, exit policy).
    fn apply(&mut self, id: InstanceId, input: Input, now: Instant, out: &mut Vec<Action>) -> bool {
        let jitter = self.jitter.sample();
        let Some(inst) = self.instances.get_mut(&id) else {
            return false;
        };
        let Some(program) = self.programs.get(&inst.program) else {
            return false;
        };
        let was_running = matches!(inst.phase, Phase::Running { .. });
        let unrequested_exit = was_running && matches!(input, Input::Exited { .. });
        let exit_status = match input {
            Input::Exited { status, .. } => Some(status),
            _ => None,
        };
        let first = out.len();
        let changed = inst.step(input, &program.policy, now, jitter, out);
        let (program_id, label) = (inst.program, inst.label.clone());
        let mut restarted = false;
        let mut i = first;
        while i < out.len() {
            match &out[i] {
                Action::Forget(gone) if *gone == id => {
                    self.instances.remove(&id);
                }
                // Held back: settle() starts it or blocks it.
                Action::Spawn(sid) if *sid == id && self.gate(program_id) != Gate::Open => {
                    out.remove(i);
                    if let Some(inst) = self.instances.get_mut(&id) {
                        inst.phase = Phase::Waiting;
                    }
                    continue;
                }
                Action::Emit(Event::Restart { .. }) => restarted = true,
                _ => {}
            }
            i += 1;
        }
        if self.shutdown.is_none() {
            if restarted {
                self.count_restart(program_id, &label, now, out);
            }
            if self.rules.exit_with_any && unrequested_exit {
                let code = exit_status.map_or(1, status_code);
                self.end_run(&label, code, out);
            }
        }
        changed
    }

    /// After inputs: start what may start, block what never can, stop what
    /// waits its turn, end the run if a `shutdown_on` program is done.
    fn settle(&mut self, now: Instant, out: &mut Vec<Action>) {
        // Each pass changes at least one instance or stops; the bound only
        // guards against a mistake here looping forever.
        for _ in 0..(4 + 2 * self.instances.len()) {
            let mut progress = self.advance_wave(now, out);
            progress |= self.advance_waiting(now, out);
            if !progress {
                break;
            }
        }
        self.check_shutdown_on(out);
    }

    /// Waiting instances whose dependencies now hold are spawned; those
    /// whose dependencies never can are blocked (reported once).
    fn advance_waiting(&mut self, now: Instant, out: &mut Vec<Action>) -> bool {
        if self.shutdown.is_some() {
            return false;
        }
        let waiting: Vec<(InstanceId, ProgramId)> = self
            .instances
            .values()
            .filter(|i| i.phase == Phase::Waiting && i.goal == Goal::Up)
            .map(|i| (i.id, i.program))
            .collect();
        let mut progress = false;
        let mut gates: HashMap<ProgramId, Gate> = HashMap::new();
        for (id, program) in waiting {
            let gate = gates.entry(program).or_insert_with(|| self.gate(program)).clone();
            match gate {
                Gate::Wait => {}
                Gate::Open => {
                    if let Some(inst) = self.instances.get_mut(&id) {
                        inst.phase = Phase::Pending;
                        out.push(Action::Spawn(id));
                        progress = true;
                    }
                }
                Gate::Never(reason) => {
                    if let Some(inst) = self.instances.get_mut(&id) {
                        inst.phase = Phase::Blocked;
                        progress = true;
                    }
                    if self.blocked.get(&program) != Some(&reason) {
                        let name = self.name_of(program);
                        self.blocked.insert(program, reason.clone());
                        out.push(Action::Emit(Event::Blocked { name, reason }));
                    }
                }
            }
        }
        let _ = now;
        progress
    }

    /// Whether a program's dependencies let it start now.
    fn gate(&self, program: ProgramId) -> Gate {
        let Some(entry) = self.programs.get(&program) else {
            return Gate::Wait;
        };
        let mut gate = Gate::Open;
        for &(dep, condition) in &entry.deps {
            match self.condition(dep, condition) {
                Gate::Open => {}
                Gate::Wait => gate = Gate::Wait,
                never => return never,
            }
        }
        gate
    }

    /// Whether `condition` holds for every instance of `dep`.
    fn condition(&self, dep: ProgramId, condition: Condition) -> Gate {
        let name = self.name_of(dep);
        let mine: Vec<&Instance> = self
            .instances
            .values()
            .filter(|i| i.program == dep && i.goal != Goal::Removed)
            .collect();
        if mine.iter().any(|i| i.phase == Phase::Blocked) {
            return Gate::Never(format!("{name} is blocked"));
        }
        let ended =
            |i: &Instance| i.phase == Phase::Fatal || (i.phase == Phase::Exited && i.goal == Goal::Up);
        let holds = |i: &&Instance| match condition {
            Condition::Started => i.started_once,
            Condition::Ready => i.ready_once,
            Condition::Exited => ended(i),
            Condition::Succeeded => {
                i.phase == Phase::Exited && i.goal == Goal::Up && i.last_exit.is_some_and(|e| e.success())
            }
        };
        if mine.iter().all(holds) {
            return Gate::Open;
        }
        let needs = condition.name();
        for i in &mine {
            if holds(i) {
                continue;
            }
            if i.phase == Phase::Fatal {
                return Gate::Never(format!("{name} is fatal (needed: {needs})"));
            }
            if ended(i) {
                let how = i.last_exit.map_or("did not start".to_string(), |e| e.describe());
                return Gate::Never(format!("{} {how} (needed: {needs})", i.label));
            }
        }
        Gate::Wait
    }

    /// Carry the pending ordered stops as far as they can go: a program's
    /// instances get their stop once no program depending on it is live.
    fn advance_wave(&mut self, now: Instant, out: &mut Vec<Action>) -> bool {
        let mut progress = false;
        let pending = std::mem::take(&mut self.wave);
        let mut still = Vec::new();
        for (program, input) in pending {
            let dependents_live = self.dependents_live(program, 0);
            let ids: Vec<InstanceId> = self
                .instances
                .values()
                .filter(|i| i.program == program)
                .filter(|i| !dependents_live || !i.live())
                .map(|i| i.id)
                .collect();
            for id in ids {
                progress |= self.apply(id, input.clone(), now, out);
            }
            if dependents_live {
                still.push((program, input));
            } else {
                progress = true;
            }
        }
        still.append(&mut self.wave);
        self.wave = still;
        if self.wave.is_empty() && self.shutdown.is_none() {
            self.wave_members.clear();
        }
        progress
    }

    /// Whether a program of the current operation that depends on
    /// `program`, directly or through others (a finished one-shot between
    /// them), still has a live instance.
    fn dependents_live(&self, program: ProgramId, depth: usize) -> bool {
        if depth > self.programs.len() {
            return false; // no cycle gets here (checked at load); a guard
        }
        self.programs.iter().any(|(q, e)| {
            self.wave_members.contains(q)
                && e.deps.iter().any(|(d, _)| *d == program)
                && (self.instances.values().any(|i| i.program == *q && i.live())
                    || self.dependents_live(*q, depth + 1))
        })
    }

    /// Queue ordered stops (dependents first) of `programs` with `input`.
    fn queue_wave(&mut self, programs: &[ProgramId], input: Input) {
        // Dependents are later in start order: queue in reverse.
        let mut sorted: Vec<ProgramId> = programs.to_vec();
        sorted.sort_by_key(|p| std::cmp::Reverse(self.order.iter().position(|q| q == p)));
        for p in sorted {
            self.wave_members.insert(p);
            if !self.wave.iter().any(|(q, _)| *q == p) {
                self.wave.push((p, input.clone()));
            }
        }
    }

    /// A policy restart: count it against the supervisor-wide budget, and
    /// restart more than the instance if the strategy says so.
    fn count_restart(&mut self, program: ProgramId, label: &str, now: Instant, out: &mut Vec<Action>) {
        if let Some(max) = self.rules.max_restarts {
            let window = self.rules.window;
            self.recent_restarts.push_back(now);
            while self
                .recent_restarts
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > window)
            {
                self.recent_restarts.pop_front();
            }
            let count = self.recent_restarts.len() as u32;
            if count > max {
                out.push(Action::Emit(Event::Escalate {
                    kind: self.rules.strategy,
                    reason: format!(
                        "{count} restarts within {}s (supervisor max_restarts = {max}), the last of {label}",
                        window.as_secs_f64()
                    ),
                }));
                self.exit_status = Some(1);
                out.push(Action::Shutdown(ShutdownReason::Escalate));
                return;
            }
        }
        let restarting: Vec<ProgramId> = match self.rules.strategy {
            Strategy::OneForOne => return,
            Strategy::OneForAll => self.order.clone(),
            Strategy::RestForOne => {
                let from = self.order.iter().position(|p| *p == program).unwrap_or(0);
                self.order[from..].to_vec()
            }
        };
        out.push(Action::Emit(Event::Strategy {
            kind: self.rules.strategy,
            trigger: label.to_string(),
            restarting: restarting.iter().map(|p| self.name_of(*p)).collect(),
        }));
        for inst in self.instances.values_mut() {
            if restarting.contains(&inst.program) {
                inst.started_once = false;
                inst.ready_once = false;
            }
        }
        self.queue_wave(&restarting, Input::Requeue);
    }

    /// A program whose end ends the run (`shutdown_on`), once it has ended
    /// for good: brood shuts down and exits with its status.
    fn check_shutdown_on(&mut self, out: &mut Vec<Action>) {
        if self.shutdown.is_some() || self.exit_status.is_some() {
            return;
        }
        let mut ended = None;
        for (id, entry) in &self.programs {
            if entry.shutdown_on == ShutdownOn::Never {
                continue;
            }
            let mine: Vec<&Instance> = self.instances.values().filter(|i| i.program == *id).collect();
            if mine.is_empty() || !mine.iter().all(|i| i.settled()) {
                continue;
            }
            let code = program_status(&mine);
            if entry.shutdown_on == ShutdownOn::Exit || code != 0 {
                ended = Some((entry.name.clone(), code));
                break;
            }
        }
        if let Some((name, code)) = ended {
            self.end_run(&name, code, out);
        }
    }

    fn end_run(&mut self, name: &str, code: i32, out: &mut Vec<Action>) {
        if self.exit_status.is_some() {
            return;
        }
        self.exit_status = Some(code);
        out.push(Action::Shutdown(ShutdownReason::ProgramEnded(name.to_string())));
    }

    fn name_of(&self, program: ProgramId) -> String {
        self.programs
            .get(&program)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    }

    pub fn instance(&self, id: InstanceId) -> Option<&Instance> {
        self.instances.get(&id)
    }

    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values()
    }

    pub fn program(&self, id: ProgramId) -> Option<&ProgramEntry> {
        self.programs.get(&id)
    }

    pub fn program_named(&self, name: &str) -> Option<ProgramId> {
        self.programs
            .iter()
            .find(|(id, p)| p.name == name && !self.retired.contains(id))
            .map(|(id, _)| *id)
    }

    /// `brood ctl reload`: apply a new config, program by program.
    /// `changes` holds every program of the new config with its entry, its
    /// number of instances and its fate (new programs with fresh ids);
    /// programs of the running config that are not in it are stopped and
    /// forgotten. Changed programs restart in order (dependents first, then
    /// started as their dependencies allow).
    pub fn reload(
        &mut self,
        changes: Vec<(ProgramId, ProgramEntry, u64, Fate)>,
        order: Vec<ProgramId>,
        rules: Rules,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        if self.shutting_down() {
            return Err("shutting down".into());
        }
        let keep: BTreeSet<ProgramId> = changes.iter().map(|(id, ..)| *id).collect();
        let removed: Vec<ProgramId> = self
            .programs
            .keys()
            .filter(|id| !keep.contains(id) && !self.retired.contains(id))
            .copied()
            .collect();
        self.order = order;
        self.rules = rules;
        let mut restart = Vec::new();
        for (id, entry, count, fate) in changes {
            let name = entry.name.clone();
            match fate {
                Fate::Unchanged => {}
                Fate::Scaled => {
                    self.programs.insert(id, entry);
                    self.scale(&name, count, now, out)?;
                }
                Fate::Restarted => {
                    self.programs.insert(id, entry);
                    self.blocked.remove(&id);
                    for inst in self.instances.values_mut().filter(|i| i.program == id) {
                        inst.started_once = false;
                        inst.ready_once = false;
                    }
                    // New instances start with the new settings at once;
                    // those that run restart in order.
                    self.scale(&name, count, now, out)?;
                    restart.push(id);
                }
                Fate::Started => {
                    self.programs.insert(id, entry);
                    for n in 1..=count {
                        let iid = self.add_instance(id, &name, n);
                        self.apply(iid, Input::Start, now, out);
                    }
                }
                Fate::Stopped => {}
            }
        }
        for id in removed {
            self.retired.insert(id);
            let ids: Vec<InstanceId> = self
                .instances
                .values()
                .filter(|i| i.program == id)
                .map(|i| i.id)
                .collect();
            for iid in ids {
                self.apply(iid, Input::Remove, now, out);
            }
        }
        self.queue_wave(&restart, Input::Restart);
        self.settle(now, out);
        Ok(())
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    /// Live instances still waiting for their dependents before their stop.
    pub fn stops_pending(&self) -> bool {
        !self.wave.is_empty()
    }

    /// The instances a target names: a label (`web.2`), a program (`web`:
    /// all its instances) or a pid.
    pub fn resolve(&self, target: &str) -> Result<Vec<InstanceId>, String> {
        let pid: Option<i32> = target.parse().ok();
        let program = self.program_named(target);
        let hits: Vec<InstanceId> = self
            .instances
            .values()
            .filter(|i| i.label == target || Some(i.program) == program || (pid.is_some() && i.pid() == pid))
            .map(|i| i.id)
            .collect();
        if hits.is_empty() {
            return Err(format!("no program or instance '{target}'"));
        }
        Ok(hits)
    }

    /// A user's request (start, stop, restart) for a target: the labels it
    /// changed. Nothing starts once shutdown has begun.
    pub fn request(
        &mut self,
        target: &str,
        input: Input,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Result<Vec<String>, String> {
        if self.shutting_down() && matches!(input, Input::Start | Input::Restart) {
            return Err("shutting down: nothing starts any more".to_string());
        }
        let ids = self.resolve(target)?;
        if matches!(input, Input::Start | Input::Restart) {
            // Trying again: a blocked program may be reported again.
            for id in &ids {
                if let Some(p) = self.instances.get(id).map(|i| i.program) {
                    self.blocked.remove(&p);
                }
            }
        }
        let mut labels = Vec::new();
        for id in ids {
            let label = self.instances.get(&id).map(|i| i.label.clone());
            if self.apply(id, input.clone(), now, out) {
                labels.extend(label);
            }
        }
        self.settle(now, out);
        Ok(labels)
    }

    /// Change a program's number of instances: extra ones are stopped and
    /// forgotten, missing ones started.
    pub fn scale(
        &mut self,
        name: &str,
        count: u64,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        let Some(program) = self.program_named(name) else {
            return Err(format!("no program '{name}'"));
        };
        if self.shutting_down() {
            return Err("shutting down".into());
        }
        let mine: Vec<(InstanceId, u64, Goal)> = self
            .instances
            .values()
            .filter(|i| i.program == program)
            .map(|i| (i.id, i.n, i.goal))
            .collect();
        for &(id, n, goal) in &mine {
            if n > count {
                self.apply(id, Input::Remove, now, out);
            } else if goal == Goal::Removed {
                // Scaled away and back before it finished stopping.
                self.apply(id, Input::Restart, now, out);
            }
        }
        for n in 1..=count {
            if !mine.iter().any(|&(_, have, _)| have == n) {
                let id = self.add_instance(program, name, n);
                self.apply(id, Input::Start, now, out);
            }
        }
        self.settle(now, out);
        Ok(())
    }

    /// Shutdown: every instance goes down and nothing starts any more; a
    /// program is stopped once every program that depends on it has ended.
    pub fn shutdown(&mut self, requested: bool, now: Instant, out: &mut Vec<Action>) {
        if self.shutdown.is_some() {
            return;
        }
        self.shutdown = Some(requested);
        // A strategy's pending restarts are moot.
        self.wave.clear();
        self.wave_members.clear();
        let all = self.order.clone();
        self.queue_wave(&all, Input::Shutdown);
        // Nothing that is not running waits for anything.
        let idle: Vec<InstanceId> = self
            .instances
            .values()
            .filter(|i| !i.live())
            .map(|i| i.id)
            .collect();
        for id in idle {
            self.apply(id, Input::Shutdown, now, out);
        }
        self.settle(now, out);
    }

    /// Every instance is down for good. With no instance at all (every
    /// program scaled to 0) brood waits for a scale up.
    pub fn all_settled(&self) -> bool {
        !self.instances.is_empty() && self.instances.values().all(Instance::settled)
    }

    /// The status a `shutdown_on` program (or an escalation) decided; else
    /// 1 with a fatal or blocked program; else 0 after a requested shutdown
    /// or when every instance ended on its own with success; 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if let Some(code) = self.exit_status {
            return code;
        }
        if self
            .instances
            .values()
            .any(|i| matches!(i.phase, Phase::Fatal | Phase::Blocked))
        {
            return 1;
        }
        if self.shutdown == Some(true) {
            return 0;
        }
        let clean = self
            .instances
            .values()
            .all(|i| i.last_exit.is_none_or(|e| e.success()));
        i32::from(!clean)
    }

    /// The widest label, for the output prefix.
    pub fn label_width(&self) -> usize {
        self.instances.values().map(|i| i.label.len()).max().unwrap_or(0)
    }

    /// What `l` and `ctl status` show.
    pub fn snapshot(&self, now: Instant) -> Vec<InstanceStatus> {
        self.instances
            .values()
            .map(|i| {
                let entry = self.programs.get(&i.program);
                let ready_check = entry.is_some_and(|e| e.policy.ready_check);
                let health_check = entry.is_some_and(|e| e.policy.health_check);
                InstanceStatus {
                    label: i.label.clone(),
                    name: entry.map(|p| p.name.clone()).unwrap_or_default(),
                    pid: i.pid(),
                    state: i.state_name().to_string(),
                    uptime_ms: i
                        .child()
                        .map(|(_, _, since)| now.saturating_duration_since(since).as_millis() as u64),
                    restarts: i.budget.restarts,
                    last_exit: i.last_exit.map(LastExit::of),
                    ready: ready_check.then_some(matches!(i.phase, Phase::Running { ready: true, .. })),
                    // null without health checks; "ok", or how it fails.
                    health: match &i.health_error {
                        Some(e) => Some(format!("failing ({} in a row): {e}", i.health_failures)),
                        None => health_check.then(|| "ok".to_string()),
                    },
                    notify_status: i.notify_status.clone(),
                    reason: (i.phase == Phase::Blocked)
                        .then(|| self.blocked.get(&i.program).cloned())
                        .flatten(),
                }
            })
            .collect()
    }
}

/// The start order of these programs: dependencies first, then as given.
pub fn start_order_of(
    entries: &[(ProgramId, ProgramEntry, u64)],
) -> Result<Vec<ProgramId>, crate::error::Error> {
    let index: HashMap<ProgramId, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, (id, _, _))| (*id, i))
        .collect();
    let names: Vec<String> = entries.iter().map(|(_, e, _)| e.name.clone()).collect();
    let deps: Vec<Vec<usize>> = entries
        .iter()
        .map(|(_, e, _)| e.deps.iter().filter_map(|(d, _)| index.get(d).copied()).collect())
        .collect();
    let order = super::graph::start_order(&names, &deps)
        .map_err(|cycle| crate::error::Error::usage(format!("depends_on cycle: {}", cycle.join(" -> "))))?;
    Ok(order.into_iter().map(|i| entries[i].0).collect())
}

/// A program's status once every instance has ended: 1 if one went fatal
/// or is blocked, else the first failure's code (128+signal when killed),
/// else 0.
fn program_status(instances: &[&Instance]) -> i32 {
    if instances
        .iter()
        .any(|i| matches!(i.phase, Phase::Fatal | Phase::Blocked))
    {
        return 1;
    }
    instances
        .iter()
        .filter_map(|i| i.last_exit)
        .find(|e| !e.success())
        .map_or(0, status_code)
}

/// An exit as a shell reports it: the code, or 128+signal.
pub fn status_code(status: ExitStatus) -> i32 {
    match status {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal { signal, .. } => 128 + signal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RestartPolicy;
    use crate::core::ids::ChildId;
    use crate::reaper::ExitStatus;

    fn policy(restart: RestartPolicy) -> Policy {
        Policy {
            restart,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            max_restarts: 3,
            window: Duration::from_secs(60),
            ready_check: false,
            health_check: false,
            health_failures: 3,
        }
    }

    fn entry(name: &str, restart: RestartPolicy) -> ProgramEntry {
        ProgramEntry {
            name: name.into(),
            policy: policy(restart),
            deps: Vec::new(),
            shutdown_on: ShutdownOn::Never,
        }
    }

    /// A core of programs given in start order, one instance each unless
    /// `counts` says otherwise.
    fn core_of(entries: Vec<ProgramEntry>, rules: Rules) -> RunCore {
        let order = (0..entries.len() as u32).map(ProgramId).collect();
        let programs = entries
            .into_iter()
            .enumerate()
            .map(|(i, e)| (ProgramId(i as u32), e, 1))
            .collect();
        RunCore::new(programs, order, rules, Jitter::seeded())
    }

    /// Plays the loop: answers spawns with made-up children, stops with
    /// exits (killed by SIGTERM), and records what happened.
    struct World {
        core: RunCore,
        now: Instant,
        next_pid: i32,
        /// Labels in the order they were spawned, and stopped.
        spawned: Vec<String>,
        stopped: Vec<String>,
        events: Vec<Event>,
        shutdown: Option<ShutdownReason>,
    }

    impl World {
        fn new(core: RunCore) -> World {
            World {
                core,
                now: Instant::now(),
                next_pid: 100,
                spawned: Vec::new(),
                stopped: Vec::new(),
                events: Vec::new(),
                shutdown: None,
            }
        }

        fn label_of(&self, id: InstanceId) -> String {
            self.core
                .instance(id)
                .map(|i| i.label.clone())
                .unwrap_or_default()
        }

        fn id(&self, label: &str) -> InstanceId {
            self.core.resolve(label).unwrap()[0]
        }

        /// Run actions until none are left; stops are answered only when
        /// `answer_stops`.
        fn run(&mut self, mut out: Vec<Action>, answer_stops: bool) {
            while !out.is_empty() {
                let mut more = Vec::new();
                for action in out {
                    match action {
                        Action::Spawn(id) => {
                            self.next_pid += 1;
                            self.spawned.push(self.label_of(id));
                            let spawned = Input::Spawned {
                                child: ChildId(self.next_pid as u64),
                                pid: self.next_pid,
                            };
                            self.core.input(id, spawned, self.now, &mut more);
                        }
                        Action::StopChild(child) => {
                            let inst = self
                                .core
                                .instances()
                                .find(|i| i.child().is_some_and(|(c, _, _)| c == child))
                                .map(|i| i.id);
                            if let Some(id) = inst {
                                self.stopped.push(self.label_of(id));
                                if answer_stops {
                                    let killed = Input::Exited {
                                        status: ExitStatus::Signal {
                                            signal: libc::SIGTERM,
                                            core: false,
                                        },
                                        ran_for: Duration::from_secs(1),
                                    };
                                    self.core.input(id, killed, self.now, &mut more);
                                }
                            }
                        }
                        Action::Emit(e) => self.events.push(e),
                        Action::Shutdown(reason) => {
                            self.shutdown = Some(reason);
                            self.core.shutdown(true, self.now, &mut more);
                        }
                        Action::Backoff(..) | Action::Forget(_) => {}
                    }
                }
                out = more;
            }
        }

        fn start(&mut self) {
            let mut out = Vec::new();
            self.core.start_all(self.now, &mut out);
            self.run(out, true);
        }

        fn feed(&mut self, label: &str, input: Input) {
            let mut out = Vec::new();
            let id = self.id(label);
            self.core.input(id, input, self.now, &mut out);
            self.run(out, true);
        }

        fn exit(&mut self, label: &str, code: i32) {
            self.feed(
                label,
                Input::Exited {
                    status: ExitStatus::Code(code),
                    ran_for: Duration::from_millis(10),
                },
            );
        }

        fn state(&self, label: &str) -> String {
            let id = self.id(label);
            self.core
                .instance(id)
                .map(|i| i.state_name().to_string())
                .unwrap_or_default()
        }
    }

    fn dep(mut e: ProgramEntry, on: u32, c: Condition) -> ProgramEntry {
        e.deps.push((ProgramId(on), c));
        e
    }

    fn with_ready(mut e: ProgramEntry) -> ProgramEntry {
        e.policy.ready_check = true;
        e
    }

    #[test]
    fn targets_resolve_by_label_program_and_pid() {
        let mut core = RunCore::new(
            vec![(ProgramId(0), entry("web", RestartPolicy::Always), 2)],
            vec![ProgramId(0)],
            Rules::default(),
            Jitter::seeded(),
        );
        let mut out = Vec::new();
        core.start_all(Instant::now(), &mut out);
        let mut w = World::new(core);
        w.run(out, true);
        assert_eq!(w.core.resolve("web").unwrap().len(), 2);
        assert_eq!(w.core.resolve("web.2").unwrap().len(), 1);
        assert_eq!(w.core.resolve("102").unwrap().len(), 1);
        assert!(w
            .core
            .resolve("nope")
            .unwrap_err()
            .contains("no program or instance 'nope'"));
    }

    #[test]
    fn a_dependent_waits_for_ready_and_starts_the_moment_it_holds() {
        let db = with_ready(entry("db", RestartPolicy::Always));
        let web = dep(entry("web", RestartPolicy::Always), 0, Condition::Ready);
        let mut w = World::new(core_of(vec![db, web], Rules::default()));
        w.start();
        assert_eq!(w.spawned, ["db.1"]);
        assert_eq!(w.state("db.1"), "starting");
        assert_eq!(w.state("web.1"), "waiting");
        w.feed("db.1", Input::Ready(super::super::instance::ReadyBy::Tcp));
        assert_eq!(w.spawned, ["db.1", "web.1"]);
        assert_eq!(w.state("db.1"), "running");
        assert!(w.events.iter().any(|e| matches!(e, Event::Ready { .. })));
    }

    #[test]
    fn started_needs_an_exec_and_succeeded_a_clean_end() {
        let migrate = entry("migrate", RestartPolicy::Never);
        let web = dep(entry("web", RestartPolicy::Always), 0, Condition::Succeeded);
        let log = dep(entry("log", RestartPolicy::Always), 0, Condition::Started);
        let mut w = World::new(core_of(vec![migrate, web, log], Rules::default()));
        w.start();
        assert_eq!(w.spawned, ["migrate.1", "log.1"]);
        w.exit("migrate.1", 0);
        assert_eq!(w.spawned, ["migrate.1", "log.1", "web.1"]);
    }

    #[test]
    fn a_failed_one_shot_blocks_its_dependent_with_the_reason_and_start_retries() {
        let migrate = entry("migrate", RestartPolicy::Never);
        let web = dep(entry("web", RestartPolicy::Always), 0, Condition::Succeeded);
        let mut w = World::new(core_of(vec![migrate, web], Rules::default()));
        w.start();
        w.exit("migrate.1", 3);
        assert_eq!(w.state("web.1"), "blocked");
        let blocked: Vec<&Event> = w
            .events
            .iter()
            .filter(|e| matches!(e, Event::Blocked { .. }))
            .collect();
        assert_eq!(blocked.len(), 1);
        let Event::Blocked { name, reason } = blocked[0] else {
            unreachable!()
        };
        assert_eq!(name, "web");
        assert!(reason.contains("migrate.1 exited with code 3"), "{reason}");
        assert!(w.core.all_settled());
        assert_eq!(w.core.exit_code(), 1, "blocked counts as a failure");
        let snap = w.core.snapshot(w.now);
        assert!(snap[1].reason.as_deref().is_some_and(|r| r.contains("migrate")));
        // The user fixes things and runs migrate again, then retries web.
        let mut out = Vec::new();
        w.core.request("migrate", Input::Start, w.now, &mut out).unwrap();
        w.run(out, true);
        w.exit("migrate.1", 0);
        let mut out = Vec::new();
        w.core.request("web", Input::Start, w.now, &mut out).unwrap();
        w.run(out, true);
        assert_eq!(w.state("web.1"), "running");
    }

    #[test]
    fn a_fatal_dependency_blocks_and_blocking_propagates() {
        let db = entry("db", RestartPolicy::Always);
        let web = dep(
            with_ready(entry("web", RestartPolicy::Always)),
            0,
            Condition::Ready,
        );
        let test = dep(entry("test", RestartPolicy::Never), 1, Condition::Ready);
        let mut db = db;
        db.policy.max_restarts = 0;
        db.policy.ready_check = true;
        let mut w = World::new(core_of(vec![db, web, test], Rules::default()));
        w.start();
        w.exit("db.1", 1);
        assert_eq!(w.state("db.1"), "fatal");
        assert_eq!(w.state("web.1"), "blocked");
        assert_eq!(w.state("test.1"), "blocked");
        assert!(w.core.all_settled());
    }

    #[test]
    fn shutdown_stops_dependents_first_and_unrelated_programs_at_once() {
        let db = entry("db", RestartPolicy::Always);
        let web = dep(entry("web", RestartPolicy::Always), 0, Condition::Started);
        let test = dep(entry("test", RestartPolicy::Always), 1, Condition::Started);
        let other = entry("other", RestartPolicy::Always);
        let mut w = World::new(core_of(vec![db, web, test, other], Rules::default()));
        w.start();
        let mut out = Vec::new();
        w.core.shutdown(true, w.now, &mut out);
        // Stops are not answered yet: only the leaves get theirs.
        w.run(out, false);
        let mut first = w.stopped.clone();
        first.sort();
        assert_eq!(first, ["other.1", "test.1"]);
        assert!(w.core.stops_pending());
        assert_eq!(w.state("db.1"), "running");
        let kill = |w: &mut World, label: &str| {
            w.feed(
                label,
                Input::Exited {
                    status: ExitStatus::Signal {
                        signal: libc::SIGTERM,
                        core: false,
                    },
                    ran_for: Duration::from_secs(1),
                },
            )
        };
        // `feed` answers later stops itself, in order.
        kill(&mut w, "test.1");
        assert_eq!(w.stopped[2..], ["web.1", "db.1"]);
        assert!(!w.core.stops_pending());
        assert_eq!(w.core.exit_code(), 0);
    }

    #[test]
    fn shutdown_order_goes_through_a_finished_one_shot() {
        let db = entry("db", RestartPolicy::Always);
        let migrate = dep(entry("migrate", RestartPolicy::Never), 0, Condition::Started);
        let web = dep(entry("web", RestartPolicy::Always), 1, Condition::Succeeded);
        let mut w = World::new(core_of(vec![db, migrate, web], Rules::default()));
        w.start();
        w.exit("migrate.1", 0);
        assert_eq!(w.state("web.1"), "running");
        let mut out = Vec::new();
        w.core.shutdown(true, w.now, &mut out);
        w.run(out, false);
        assert_eq!(w.stopped, ["web.1"], "db waits for web, through migrate");
    }

    #[test]
    fn one_for_all_restarts_everything_in_order_and_says_so() {
        let db = entry("db", RestartPolicy::Always);
        let web = dep(entry("web", RestartPolicy::Always), 0, Condition::Started);
        let other = entry("other", RestartPolicy::Always);
        let rules = Rules {
            strategy: Strategy::OneForAll,
            ..Rules::default()
        };
        let mut w = World::new(core_of(vec![db, web, other], rules));
        w.start();
        w.exit("db.1", 1);
        // web and other were stopped, web before db could come back.
        let mut stopped = w.stopped.clone();
        stopped.sort();
        assert_eq!(stopped, ["other.1", "web.1"]);
        let strategy: Vec<&Event> = w
            .events
            .iter()
            .filter(|e| matches!(e, Event::Strategy { .. }))
            .collect();
        assert_eq!(strategy.len(), 1);
        // db waits out its backoff; web waits for db; other is back at once.
        assert_eq!(w.state("db.1"), "backoff");
        assert_eq!(w.state("web.1"), "waiting");
        assert_eq!(w.state("other.1"), "running");
        let until = match w.core.instance(w.id("db.1")).map(|i| i.phase) {
            Some(Phase::Backoff { until }) => until,
            p => panic!("{p:?}"),
        };
        w.now = until;
        w.feed("db.1", Input::BackoffOver);
        assert_eq!(w.state("web.1"), "running");
        assert_eq!(w.spawned.iter().filter(|l| *l == "web.1").count(), 2);
    }

    #[test]
    fn rest_for_one_restarts_the_failed_program_and_those_after_it_only() {
        let a = entry("a", RestartPolicy::Always);
        let b = entry("b", RestartPolicy::Always);
        let c = entry("c", RestartPolicy::Always);
        let rules = Rules {
            strategy: Strategy::RestForOne,
            ..Rules::default()
        };
        let mut w = World::new(core_of(vec![a, b, c], rules));
        w.start();
        w.exit("b.1", 1);
        assert_eq!(w.stopped, ["c.1"]);
        assert_eq!(w.spawned.iter().filter(|l| *l == "a.1").count(), 1);
    }

    #[test]
    fn the_supervisor_budget_escalates_to_a_shutdown_with_status_1() {
        let a = entry("a", RestartPolicy::Always);
        let rules = Rules {
            max_restarts: Some(2),
            window: Duration::from_secs(60),
            ..Rules::default()
        };
        let mut w = World::new(core_of(vec![a], rules));
        w.start();
        for _ in 0..3 {
            w.exit("a.1", 1);
            if w.shutdown.is_some() {
                break;
            }
            let id = w.id("a.1");
            let Some(Phase::Backoff { until }) = w.core.instance(id).map(|i| i.phase) else {
                panic!("no backoff")
            };
            w.now = until;
            w.feed("a.1", Input::BackoffOver);
        }
        assert_eq!(w.shutdown, Some(ShutdownReason::Escalate));
        assert!(w.events.iter().any(|e| matches!(e, Event::Escalate { .. })));
        assert_eq!(w.core.exit_code(), 1);
    }

    #[test]
    fn shutdown_on_exit_ends_the_run_with_that_programs_status() {
        let web = entry("web", RestartPolicy::Always);
        let mut test = dep(entry("test", RestartPolicy::Never), 0, Condition::Started);
        test.shutdown_on = ShutdownOn::Exit;
        let mut w = World::new(core_of(vec![web, test], Rules::default()));
        w.start();
        w.exit("test.1", 4);
        assert_eq!(w.shutdown, Some(ShutdownReason::ProgramEnded("test".into())));
        assert_eq!(w.stopped, ["web.1"]);
        assert_eq!(w.core.exit_code(), 4);
    }

    #[test]
    fn shutdown_on_failure_ignores_a_success_and_signals_are_128_plus() {
        let mut job = entry("job", RestartPolicy::Never);
        job.shutdown_on = ShutdownOn::Failure;
        let web = entry("web", RestartPolicy::Always);
        let mut w = World::new(core_of(vec![job, web], Rules::default()));
        w.start();
        w.exit("job.1", 0);
        assert_eq!(w.shutdown, None);
        let mut job = entry("job", RestartPolicy::Never);
        job.shutdown_on = ShutdownOn::Failure;
        let mut w = World::new(core_of(vec![job], Rules::default()));
        w.start();
        w.feed(
            "job.1",
            Input::Exited {
                status: ExitStatus::Signal {
                    signal: libc::SIGKILL,
                    core: false,
                },
                ran_for: Duration::ZERO,
            },
        );
        assert_eq!(w.core.exit_code(), 137);
    }

    #[test]
    fn exit_with_any_ends_the_run_on_the_first_exit_as_honcho_does() {
        let a = entry("a", RestartPolicy::Always);
        let b = entry("b", RestartPolicy::Always);
        let rules = Rules {
            exit_with_any: true,
            ..Rules::default()
        };
        let mut w = World::new(core_of(vec![a, b], rules));
        w.start();
        w.exit("b.1", 2);
        assert_eq!(w.shutdown, Some(ShutdownReason::ProgramEnded("b.1".into())));
        assert_eq!(w.stopped, ["a.1"]);
        assert_eq!(w.core.exit_code(), 2);
        assert_eq!(w.spawned, ["a.1", "b.1"], "b was not restarted");
    }

    #[test]
    fn shutdown_shows_stopping_and_refuses_starts() {
        let mut w = World::new(core_of(
            vec![
                entry("web", RestartPolicy::Always),
                entry("job", RestartPolicy::Never),
            ],
            Rules::default(),
        ));
        w.start();
        let mut out = Vec::new();
        w.core.shutdown(true, w.now, &mut out);
        assert_eq!(
            out.iter().filter(|a| matches!(a, Action::StopChild(_))).count(),
            2
        );
        assert!(w.core.snapshot(w.now).iter().all(|r| r.state == "stopping"));
        assert!(w.core.request("web", Input::Start, w.now, &mut out).is_err());
        assert!(w.core.request("web", Input::Restart, w.now, &mut out).is_err());
        assert!(w.core.scale("web", 5, w.now, &mut out).is_err());
    }

    #[test]
    fn scaling_down_forgets_and_a_scaled_away_exit_does_not_fail_the_run() {
        let mut core = RunCore::new(
            vec![
                (ProgramId(0), entry("web", RestartPolicy::Always), 2),
                (ProgramId(1), entry("job", RestartPolicy::Never), 1),
            ],
            vec![ProgramId(0), ProgramId(1)],
            Rules::default(),
            Jitter::seeded(),
        );
        let now = Instant::now();
        let mut out = Vec::new();
        core.start_all(now, &mut out);
        let mut w = World::new(core);
        w.run(out, true);
        let mut out = Vec::new();
        w.core.scale("web", 0, w.now, &mut out).unwrap();
        w.run(out, true);
        assert_eq!(w.stopped, ["web.1", "web.2"]);
        assert!(w.core.resolve("web").is_err(), "forgotten");
        w.exit("job.1", 0);
        assert!(w.core.all_settled());
        assert_eq!(w.core.exit_code(), 0);
    }

    #[test]
    fn scale_up_adds_numbered_instances_and_revives_one_still_stopping() {
        let mut core = RunCore::new(
            vec![
                (ProgramId(0), entry("web", RestartPolicy::Always), 2),
                (ProgramId(1), entry("job", RestartPolicy::Never), 1),
            ],
            vec![ProgramId(0), ProgramId(1)],
            Rules::default(),
            Jitter::seeded(),
        );
        let now = Instant::now();
        let mut out = Vec::new();
        core.start_all(now, &mut out);
        let mut w = World::new(core);
        w.run(out, true);
        let mut out = Vec::new();
        w.core.scale("web", 1, w.now, &mut out).unwrap();
        w.core.scale("web", 3, w.now, &mut out).unwrap();
        let labels: Vec<String> = w.core.snapshot(w.now).into_iter().map(|r| r.label).collect();
        assert_eq!(labels, ["web.1", "web.2", "job.1", "web.3"]);
        let web2 = w.id("web.2");
        assert_eq!(w.core.instance(web2).map(|i| i.goal), Some(Goal::Up));
        assert_eq!(w.core.label_width(), 5);
    }
}
