//! Every instance of a `brood run`, and the requests that reach many at
//! once (a target naming a program, a scale, the shutdown). Pure data: the
//! loop feeds it inputs and executes the actions it returns.

use std::collections::BTreeMap;
use std::time::Instant;

use super::ids::{Counter, InstanceId, ProgramId};
use super::instance::{Action, Goal, Input, Instance, Phase};
use super::policy::{Jitter, Policy};
use super::status::{InstanceStatus, LastExit};

/// What the core knows of a program: its name and restart policy.
#[derive(Clone, Debug)]
pub struct ProgramEntry {
    pub name: String,
    pub policy: Policy,
}

pub struct RunCore {
    programs: BTreeMap<ProgramId, ProgramEntry>,
    instances: BTreeMap<InstanceId, Instance>,
    ids: Counter,
    jitter: Jitter,
    /// Set once shutdown began: whether someone asked for it.
    shutdown: Option<bool>,
}

impl RunCore {
    /// Programs in start order, each with its number of instances.
    pub fn new(programs: Vec<(ProgramId, ProgramEntry, u64)>, jitter: Jitter) -> RunCore {
        let mut core = RunCore {
            programs: BTreeMap::new(),
            instances: BTreeMap::new(),
            ids: Counter::default(),
            jitter,
            shutdown: None,
        };
        for (id, entry, count) in programs {
            let name = entry.name.clone();
            core.programs.insert(id, entry);
            for n in 1..=count {
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

    /// Start every instance (once, at the beginning of the run).
    pub fn start_all(&mut self, now: Instant, out: &mut Vec<Action>) {
        let ids: Vec<InstanceId> = self.instances.keys().copied().collect();
        for id in ids {
            self.input(id, Input::Start, now, out);
        }
    }

    /// Feed one input to one instance. False when the instance is gone or
    /// the input changed nothing.
    pub fn input(&mut self, id: InstanceId, input: Input, now: Instant, out: &mut Vec<Action>) -> bool {
        let jitter = self.jitter.sample();
        let Some(inst) = self.instances.get_mut(&id) else {
            return false;
        };
        let Some(program) = self.programs.get(&inst.program) else {
            return false;
        };
        let first = out.len();
        let changed = inst.step(input, &program.policy, now, jitter, out);
        if out[first..].contains(&Action::Forget(id)) {
            self.instances.remove(&id);
        }
        changed
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
            .find(|(_, p)| p.name == name)
            .map(|(id, _)| *id)
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_some()
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
        let mut labels = Vec::new();
        for id in self.resolve(target)? {
            let label = self.instances.get(&id).map(|i| i.label.clone());
            if self.input(id, input, now, out) {
                labels.extend(label);
            }
        }
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
                self.input(id, Input::Remove, now, out);
            } else if goal == Goal::Removed {
                // Scaled away and back before it finished stopping.
                self.input(id, Input::Restart, now, out);
            }
        }
        for n in 1..=count {
            if !mine.iter().any(|&(_, have, _)| have == n) {
                let id = self.add_instance(program, name, n);
                self.input(id, Input::Start, now, out);
            }
        }
        Ok(())
    }

    /// Shutdown: every instance goes down and nothing starts any more.
    pub fn shutdown(&mut self, requested: bool, now: Instant, out: &mut Vec<Action>) {
        if self.shutdown.is_some() {
            return;
        }
        self.shutdown = Some(requested);
        let ids: Vec<InstanceId> = self.instances.keys().copied().collect();
        for id in ids {
            self.input(id, Input::Shutdown, now, out);
        }
    }

    /// Every instance is down for good. With no instance at all (every
    /// program scaled to 0) brood waits for a scale up.
    pub fn all_settled(&self) -> bool {
        !self.instances.is_empty() && self.instances.values().all(Instance::settled)
    }

    /// 0 after a requested shutdown with no fatal program, or when every
    /// instance ended on its own with success; 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.instances.values().any(|i| i.phase == Phase::Fatal) {
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
            .map(|i| InstanceStatus {
                label: i.label.clone(),
                name: self
                    .programs
                    .get(&i.program)
                    .map(|p| p.name.clone())
                    .unwrap_or_default(),
                pid: i.pid(),
                state: i.state_name().to_string(),
                uptime_ms: i
                    .child()
                    .map(|(_, _, since)| now.saturating_duration_since(since).as_millis() as u64),
                restarts: i.budget.restarts,
                last_exit: i.last_exit.map(LastExit::of),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RestartPolicy;
    use crate::core::ids::ChildId;
    use crate::reaper::ExitStatus;
    use std::time::Duration;

    fn entry(name: &str, restart: RestartPolicy) -> ProgramEntry {
        ProgramEntry {
            name: name.into(),
            policy: Policy {
                restart,
                backoff_initial: Duration::from_millis(100),
                backoff_max: Duration::from_secs(1),
                max_restarts: 3,
                window: Duration::from_secs(60),
            },
        }
    }

    /// Answer every spawn the core asks for, with made-up children.
    fn answer_spawns(core: &mut RunCore, out: &mut Vec<Action>, now: Instant, next_pid: &mut i32) {
        while let Some(pos) = out.iter().position(|a| matches!(a, Action::Spawn(_))) {
            let Action::Spawn(id) = out.remove(pos) else {
                unreachable!()
            };
            *next_pid += 1;
            let spawned = Input::Spawned {
                child: ChildId(*next_pid as u64),
                pid: *next_pid,
            };
            core.input(id, spawned, now, out);
        }
    }

    fn two_programs() -> RunCore {
        RunCore::new(
            vec![
                (ProgramId(0), entry("web", RestartPolicy::Always), 2),
                (ProgramId(1), entry("job", RestartPolicy::Never), 1),
            ],
            Jitter::seeded(),
        )
    }

    #[test]
    fn targets_resolve_by_label_program_and_pid() {
        let now = Instant::now();
        let mut core = two_programs();
        let mut out = Vec::new();
        let mut pid = 100;
        core.start_all(now, &mut out);
        answer_spawns(&mut core, &mut out, now, &mut pid);
        assert_eq!(core.resolve("web").unwrap().len(), 2);
        assert_eq!(core.resolve("web.2").unwrap().len(), 1);
        assert_eq!(core.resolve("103").unwrap().len(), 1);
        assert!(core
            .resolve("nope")
            .unwrap_err()
            .contains("no program or instance 'nope'"));
    }

    #[test]
    fn shutdown_shows_stopping_and_refuses_starts() {
        let now = Instant::now();
        let mut core = two_programs();
        let mut out = Vec::new();
        let mut pid = 100;
        core.start_all(now, &mut out);
        answer_spawns(&mut core, &mut out, now, &mut pid);
        out.clear();
        core.shutdown(true, now, &mut out);
        assert_eq!(
            out.iter().filter(|a| matches!(a, Action::StopChild(_))).count(),
            3
        );
        assert!(core.snapshot(now).iter().all(|r| r.state == "stopping"));
        assert!(core.request("web", Input::Start, now, &mut out).is_err());
        assert!(core.request("web", Input::Restart, now, &mut out).is_err());
        assert!(core.scale("web", 5, now, &mut out).is_err());
    }

    #[test]
    fn scaling_down_forgets_and_a_scaled_away_exit_does_not_fail_the_run() {
        let now = Instant::now();
        let mut core = two_programs();
        let mut out = Vec::new();
        let mut pid = 100;
        core.start_all(now, &mut out);
        answer_spawns(&mut core, &mut out, now, &mut pid);
        out.clear();
        core.scale("web", 0, now, &mut out).unwrap();
        let stops: Vec<_> = out.iter().filter(|a| matches!(a, Action::StopChild(_))).collect();
        assert_eq!(stops.len(), 2);
        let web: Vec<InstanceId> = core.resolve("web").unwrap();
        for id in web {
            let killed = Input::Exited {
                status: ExitStatus::Signal {
                    signal: libc::SIGTERM,
                    core: false,
                },
                ran_for: Duration::ZERO,
            };
            core.input(id, killed, now, &mut out);
        }
        assert!(core.resolve("web").is_err(), "forgotten");
        let job = core.resolve("job").unwrap()[0];
        let ok = Input::Exited {
            status: ExitStatus::Code(0),
            ran_for: Duration::ZERO,
        };
        core.input(job, ok, now, &mut out);
        assert!(core.all_settled());
        assert_eq!(core.exit_code(), 0);
    }

    #[test]
    fn scale_up_adds_numbered_instances_and_revives_one_still_stopping() {
        let now = Instant::now();
        let mut core = two_programs();
        let mut out = Vec::new();
        let mut pid = 100;
        core.start_all(now, &mut out);
        answer_spawns(&mut core, &mut out, now, &mut pid);
        core.scale("web", 1, now, &mut out).unwrap();
        core.scale("web", 3, now, &mut out).unwrap();
        let labels: Vec<String> = core.snapshot(now).into_iter().map(|r| r.label).collect();
        assert_eq!(labels, ["web.1", "web.2", "job.1", "web.3"]);
        let web2 = core.resolve("web.2").unwrap()[0];
        assert_eq!(core.instance(web2).map(|i| i.goal), Some(Goal::Up));
        assert_eq!(core.label_width(), 5);
    }

    #[test]
    fn exit_code_is_one_for_a_fatal_program_or_a_failed_one_shot() {
        let now = Instant::now();
        let mut core = RunCore::new(
            vec![(ProgramId(0), entry("job", RestartPolicy::Never), 1)],
            Jitter::seeded(),
        );
        let mut out = Vec::new();
        let mut pid = 1;
        core.start_all(now, &mut out);
        answer_spawns(&mut core, &mut out, now, &mut pid);
        let id = core.resolve("job").unwrap()[0];
        let failed = Input::Exited {
            status: ExitStatus::Code(4),
            ran_for: Duration::ZERO,
        };
        core.input(id, failed, now, &mut out);
        assert!(core.all_settled());
        assert_eq!(core.exit_code(), 1);
    }
}
