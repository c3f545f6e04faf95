//! `brood run` inside the loop: feeding the run core its inputs (exits,
//! spawns, timers, user requests) and executing the actions it returns.
//! No decision is made here; they are all in `crate::core`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{Driver, Supervisor};
use crate::control::ring::Ring;
use crate::core::event::Event;
use crate::core::ids::{InstanceId, ProgramId};
use crate::core::instance::{Action, Input};
use crate::core::run::{start_order_of, Fate, ProgramEntry};
use crate::core::status::InstanceStatus;
use crate::core::timers::Timer;
use crate::reaper::ExitStatus;
use crate::run_plan::{self, PlanArgs};

impl Supervisor {
    /// Carry out the core's actions, and those that follow from them (a
    /// spawn answers with `Spawned` or `SpawnFailed`, which may act again).
    pub(super) fn execute(&mut self, actions: Vec<Action>) {
        let mut todo: VecDeque<Action> = actions.into();
        while let Some(action) = todo.pop_front() {
            let mut more = Vec::new();
            match action {
                Action::Spawn(id) => {
                    let Driver::Run(core) = &self.driver else { return };
                    let Some(inst) = core.instance(id) else { continue };
                    let (program, n) = (inst.program, inst.n);
                    let input = match self.spawn_child(program, n, Some(id)) {
                        Some((child, pid)) => Input::Spawned { child, pid },
                        None => Input::SpawnFailed,
                    };
                    let spawned = matches!(input, Input::Spawned { .. });
                    self.feed(id, input, &mut more);
                    if spawned {
                        self.on_spawned(id);
                    }
                }
                Action::StopChild(child) => {
                    if let Some(instance) = self.children.get(&child).and_then(|c| c.instance) {
                        self.teardown_probes(instance);
                    }
                    if let Some(program) = self.children.get(&child).map(|c| c.program) {
                        let grace = self.grace_for(program);
                        self.stop_child(child, grace);
                    }
                }
                Action::Backoff(id, until) => self.timers.schedule(Timer::Backoff(id), until),
                Action::Emit(event) => {
                    match &event {
                        Event::Restart {
                            label,
                            delay_ms,
                            attempt,
                        } => log::info!("{label} restarting in {delay_ms}ms (attempt {attempt})"),
                        Event::Fatal { label, reason } => {
                            log::error!("{label} is fatal: {reason}; not restarting it")
                        }
                        Event::Blocked { name, reason } => log::warn!("{name} is blocked: {reason}"),
                        Event::Ready {
                            label, by, after_ms, ..
                        } => log::info!("{label} is ready ({}, after {after_ms}ms)", by.word()),
                        Event::ReadyTimeout { label, reason, .. } => {
                            log::warn!("{label} {reason}: stopping it (a failed start)")
                        }
                        Event::Unhealthy { label, reason, .. } => {
                            log::warn!("{label} is unhealthy ({reason}): restarting it")
                        }
                        Event::Strategy {
                            kind,
                            trigger,
                            restarting,
                        } => log::info!("{trigger} failed: {kind} restarts {}", restarting.join(", ")),
                        Event::Escalate { reason, .. } => log::error!("giving up: {reason}"),
                        _ => {}
                    }
                    self.events.emit(&event);
                }
                Action::Forget(id) => self.timers.cancel(Timer::Backoff(id)),
                Action::Shutdown(reason) => self.begin_shutdown(reason),
            }
            todo.extend(more);
        }
        self.arm_shutdown_grace(Instant::now());
    }

    /// Feed one input to the core, collecting its actions.
    fn feed(&mut self, id: InstanceId, input: Input, out: &mut Vec<Action>) -> bool {
        let now = Instant::now();
        match &mut self.driver {
            Driver::Run(core) => core.input(id, input, now, out),
            Driver::Spawn(_) => false,
        }
    }

    /// An instance's child was reaped.
    pub(super) fn on_instance_exit(&mut self, id: InstanceId, status: ExitStatus, ran_for: Duration) {
        self.teardown_probes(id);
        let mut actions = Vec::new();
        self.feed(id, Input::Exited { status, ran_for }, &mut actions);
        self.execute(actions);
    }

    pub(super) fn on_backoff_over(&mut self, id: InstanceId, _now: Instant) {
        let mut actions = Vec::new();
        self.feed(id, Input::BackoffOver, &mut actions);
        self.execute(actions);
    }

    /// A user's start, stop or restart of a target (console, ctl): the
    /// labels it changed.
    pub(super) fn request(&mut self, target: &str, input: Input) -> Result<Vec<String>, String> {
        let Driver::Run(core) = &mut self.driver else {
            return Err("not in run mode".into());
        };
        let mut actions = Vec::new();
        let labels = core.request(target, input, Instant::now(), &mut actions)?;
        self.execute(actions);
        Ok(labels)
    }

    /// Send `sig` to the process group of every matching running instance.
    pub(super) fn signal_instances(&mut self, target: &str, sig: i32) -> Result<Vec<String>, String> {
        let Driver::Run(core) = &self.driver else {
            return Err("not in run mode".into());
        };
        let mut hits = Vec::new();
        for id in core.resolve(target)? {
            if let Some((child, pid, _)) = core.instance(id).and_then(|i| i.child()) {
                hits.push((child, pid));
            }
        }
        let mut done = Vec::new();
        for (child, pid) in hits {
            let Some(label) = self.children.get(&child).map(|c| c.label.clone()) else {
                continue;
            };
            if super::process::signal_child(pid, sig) {
                self.events.emit(&Event::signal(&label, pid, sig));
                done.push(label);
            }
        }
        Ok(done)
    }

    /// Change the number of instances of a program at run time.
    pub(super) fn scale(&mut self, name: &str, count: u32) -> Result<(), String> {
        let Driver::Run(core) = &mut self.driver else {
            return Err("not in run mode".into());
        };
        let mut actions = Vec::new();
        core.scale(name, u64::from(count), Instant::now(), &mut actions)?;
        self.width = self.width.max(core.label_width());
        log::info!("scaled {name} to {count}");
        self.execute(actions);
        Ok(())
    }

    /// The snapshot `ctl status` and `l` show.
    pub(super) fn snapshot(&self) -> Vec<InstanceStatus> {
        match &self.driver {
            Driver::Run(core) => core.snapshot(Instant::now()),
            Driver::Spawn(_) => Vec::new(),
        }
    }
}

/// What `brood ctl reload` needs: the arguments to plan the run again, and
/// what each running program was planned from.
pub struct ReloadState {
    args: PlanArgs,
    /// By name: the program's id, its settings' fingerprint and numprocs.
    programs: HashMap<String, (ProgramId, String, u32)>,
    next_id: u32,
}

impl Supervisor {
    /// Run mode: the sd_notify socket the plan gave its programs.
    pub fn with_notify(mut self, socket: Option<crate::probe::NotifySocket>) -> Supervisor {
        if let Some(mut sock) = socket {
            match self
                .poll
                .registry()
                .register(&mut sock, super::probes::NOTIFY, mio::Interest::READABLE)
            {
                Ok(()) => self.probes.notify = Some(sock),
                Err(e) => log::error!("cannot watch the sd_notify socket: {e}"),
            }
        }
        self
    }

    /// Run mode: remember how the run was planned, for reload.
    pub fn with_reload(mut self, args: PlanArgs, planned: Vec<(ProgramId, String, u32)>) -> Supervisor {
        let next_id = planned.iter().map(|(id, ..)| id.0 + 1).max().unwrap_or(0);
        let programs = planned
            .into_iter()
            .filter_map(|(id, fp, n)| Some((self.programs.get(&id)?.name.clone(), (id, fp, n))))
            .collect();
        self.reload = Some(ReloadState {
            args,
            programs,
            next_id,
        });
        self
    }

    /// `brood ctl reload`, console `R`: read the config again and apply
    /// what changed. An invalid config changes nothing.
    pub(super) fn reload(&mut self) -> Result<BTreeMap<String, Fate>, String> {
        if self.shutdown.is_some() {
            return Err("shutting down".into());
        }
        let Some(state) = self.reload.as_mut() else {
            return Err("reload works in run mode".into());
        };
        let mut plan = run_plan::plan(&state.args).map_err(|e| e.message)?;
        if plan.wants_notify() && state.args.notify_socket.is_none() {
            let path = self.ensure_notify_socket()?;
            let Some(state) = self.reload.as_mut() else {
                return Err("reload works in run mode".into());
            };
            state.args.notify_socket = Some(path);
            plan = run_plan::plan(&state.args).map_err(|e| e.message)?;
        }
        let Some(state) = self.reload.as_mut() else {
            return Err("reload works in run mode".into());
        };
        let mut fates = BTreeMap::new();
        let mut ids: HashMap<String, ProgramId> = HashMap::new();
        let mut known = HashMap::new();
        for p in &plan.programs {
            let (id, fate) = match state.programs.get(&p.name) {
                Some((id, fp, n)) if *fp == p.fingerprint && *n == p.numprocs => (*id, Fate::Unchanged),
                Some((id, fp, _)) if *fp == p.fingerprint => (*id, Fate::Scaled),
                Some((id, ..)) => (*id, Fate::Restarted),
                None => {
                    let id = ProgramId(state.next_id);
                    state.next_id += 1;
                    (id, Fate::Started)
                }
            };
            ids.insert(p.name.clone(), id);
            fates.insert(p.name.clone(), fate);
            known.insert(p.name.clone(), (id, p.fingerprint.clone(), p.numprocs));
        }
        for name in state.programs.keys() {
            if !ids.contains_key(name) {
                fates.insert(name.clone(), Fate::Stopped);
            }
        }
        let mut changes = Vec::new();
        let mut images = Vec::new();
        for p in plan.programs {
            let id = ids[&p.name];
            let fate = fates[&p.name];
            let entry = ProgramEntry {
                name: p.name.clone(),
                policy: p.policy,
                deps: p
                    .deps
                    .iter()
                    .filter_map(|(d, c)| Some((*ids.get(d)?, *c)))
                    .collect(),
                shutdown_on: p.shutdown_on,
            };
            changes.push((id, entry, u64::from(p.numprocs), fate));
            if matches!(fate, Fate::Restarted | Fate::Started) {
                self.logs.set_spec(id, p.name.clone(), p.log.clone());
                images.push((id, p.program));
            }
        }
        let order = start_order_of(
            &changes
                .iter()
                .map(|(id, e, n, _)| (*id, e.clone(), *n))
                .collect::<Vec<_>>(),
        )
        .map_err(|e| e.message)?;
        let Driver::Run(core) = &mut self.driver else {
            return Err("reload works in run mode".into());
        };
        let mut actions = Vec::new();
        // Images first: the core's actions spawn with them.
        for (id, program) in images {
            self.programs.insert(id, program);
            if let Some(ctl) = self.control.as_mut() {
                ctl.rings.entry(id).or_insert_with(Ring::default);
            }
        }
        core.reload(changes, order, plan.rules, Instant::now(), &mut actions)?;
        self.width = self.width.max(core.label_width());
        state.programs = known;
        let summary: Vec<String> = fates.iter().map(|(n, f)| format!("{n} {}", f.word())).collect();
        log::info!("reloaded {}: {}", plan.path.display(), summary.join(", "));
        self.events.emit(&Event::Reload {
            programs: fates.clone(),
        });
        self.execute(actions);
        Ok(fates)
    }
}
