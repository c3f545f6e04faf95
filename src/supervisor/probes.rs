//! Readiness and health inside the loop (SPEC 13): the pieces of
//! `crate::probe` driven by readiness events and the timer queue. Results
//! become run-core inputs (`Ready`, `ReadyTimeout`, `Health`,
//! `NotifyStatus`); the core decides what they mean.
//!
//! Per instance at most one attempt is under way (an fd pipe, a tcp/http
//! check or an exec probe), under the instance's probe token. Its deadline,
//! the next attempt, the readiness deadline and the watchdog are timers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mio::{Interest, Token};

use super::{Driver, Supervisor};
use crate::config::probe::{HealthSpec, ProbeSpec, ReadyKind, ReadySpec};
use crate::core::ids::InstanceId;
use crate::core::instance::{Input, Phase, ReadyBy};
use crate::core::timers::Timer;
use crate::probe::fd::ReadyPipe;
use crate::probe::notify::Drained;
use crate::probe::{pgid_of, Check, NotifySocket, Outcome, Target};
use crate::reaper::ExitStatus;
use crate::spawn::{self, plan, Stdio};

/// The sd_notify socket's token.
pub(super) const NOTIFY: Token = Token(6);
/// Instance probe tokens: this plus the instance id.
pub(super) const FIRST_PROBE: usize = 1 << 41;

fn probe_token(id: InstanceId) -> Token {
    Token(FIRST_PROBE + id.0 as usize)
}

/// One attempt under way.
enum Attempt {
    Net(Check),
    Exec { pid: i32 },
    Fd(ReadyPipe),
}

#[derive(Default)]
pub(super) struct Probes {
    /// The sd_notify socket, once a program needs it.
    pub notify: Option<NotifySocket>,
    /// The socket's queue may hold more datagrams than one turn took.
    pub notify_more: bool,
    attempts: HashMap<InstanceId, Attempt>,
    /// Exec probes by pid: their exits are probe results, not instances'.
    exec_pids: HashMap<i32, InstanceId>,
    /// Instances whose output matched their `ready = { log }` this turn.
    pub log_ready: Vec<InstanceId>,
}

/// What an instance is being probed for now.
enum Stage {
    Ready(ReadySpec),
    Health(HealthSpec),
}

impl Supervisor {
    /// `now + interval`, moved up to the next point of a grid shared by
    /// every instance (a tenth of the interval, at most 25 ms): checks of
    /// many instances then fall due in the same loop turn instead of each
    /// waking the loop on its own (100 programs checked every 100 ms: 40
    /// wake-ups a second, not 1,000).
    fn coalesced(&self, now: Instant, interval: Duration) -> Instant {
        let due = now + interval;
        let grid = (interval / 10).clamp(Duration::from_millis(1), Duration::from_millis(25));
        let since = due.saturating_duration_since(self.epoch).as_nanos();
        let step = grid.as_nanos().max(1);
        let up = (step - since % step) % step;
        due + Duration::from_nanos(up as u64)
    }

    /// The program settings and phase of a run-mode instance.
    fn probe_stage(&self, id: InstanceId) -> Option<(Stage, i32)> {
        let Driver::Run(core) = &self.driver else {
            return None;
        };
        let inst = core.instance(id)?;
        let Phase::Running { ready, pid, .. } = inst.phase else {
            return None;
        };
        let program = self.programs.get(&inst.program)?;
        if ready {
            Some((Stage::Health(program.health.clone()?), pid))
        } else {
            Some((Stage::Ready(program.ready.clone()?), pid))
        }
    }

    /// The sd_notify socket, made on first need and watched.
    pub(super) fn ensure_notify_socket(&mut self) -> Result<std::path::PathBuf, String> {
        if let Some(sock) = &self.probes.notify {
            return Ok(sock.path().to_path_buf());
        }
        let dir = crate::probe::notify::runtime_dir()
            .map_err(|e| format!("no directory for NOTIFY_SOCKET: {e}"))?;
        let (mut sock, path) =
            NotifySocket::bind(&dir).map_err(|e| format!("cannot make the sd_notify socket: {e}"))?;
        self.poll
            .registry()
            .register(&mut sock, NOTIFY, Interest::READABLE)
            .map_err(|e| format!("cannot watch the sd_notify socket: {e}"))?;
        self.probes.notify = Some(sock);
        Ok(path)
    }

    /// An instance was spawned: start its readiness clock and check.
    pub(super) fn on_spawned(&mut self, id: InstanceId) {
        let now = Instant::now();
        let ready = match self.probe_stage(id) {
            Some((Stage::Ready(ready), _)) => ready,
            // No readiness check: ready at once, health checks begin.
            Some((Stage::Health(health), _)) => {
                self.timers
                    .schedule(Timer::ProbeAttempt(id), self.coalesced(now, health.interval));
                return;
            }
            None => return,
        };
        self.timers
            .schedule(Timer::ReadyDeadline(id), now + ready.timeout);
        if let ReadyKind::Probe(probe) = &ready.kind {
            let limit = now + ready.interval.max(Duration::from_secs(1));
            self.start_attempt(id, probe, limit.min(now + ready.timeout));
        }
    }

    /// The fd a `ready = { fd = N }` instance writes its newline to.
    pub(super) fn watch_ready_pipe(&mut self, id: InstanceId, mut pipe: ReadyPipe) {
        match self
            .poll
            .registry()
            .register(&mut pipe, probe_token(id), Interest::READABLE)
        {
            Ok(()) => {
                self.probes.attempts.insert(id, Attempt::Fd(pipe));
            }
            Err(e) => log::error!("cannot watch a notification fd: {e}"),
        }
    }

    fn start_attempt(&mut self, id: InstanceId, probe: &ProbeSpec, deadline: Instant) {
        self.cancel_attempt(id);
        let token = probe_token(id);
        let started = match probe {
            ProbeSpec::Tcp(addr) => {
                Check::start(&Target::Tcp(*addr), self.poll.registry(), token).map(Attempt::Net)
            }
            ProbeSpec::Http(target) => {
                Check::start(&Target::Http(target.clone()), self.poll.registry(), token).map(Attempt::Net)
            }
            ProbeSpec::Exec(argv) => self.spawn_exec_probe(id, argv).map(|pid| Attempt::Exec { pid }),
        };
        match started {
            Ok(attempt) => {
                self.probes.attempts.insert(id, attempt);
                self.timers.schedule(Timer::ProbeTimeout(id), deadline);
            }
            Err(reason) => self.attempt_done(id, Outcome::Fail(reason)),
        }
    }

    /// `exec = [ARGV]`: through the spawn core, in the instance's directory
    /// and environment, output to /dev/null, its own process group.
    fn spawn_exec_probe(&mut self, id: InstanceId, argv: &[std::ffi::OsString]) -> Result<i32, String> {
        let Driver::Run(core) = &self.driver else {
            return Err("not in run mode".into());
        };
        let program = core.instance(id).map(|i| i.program).ok_or("gone")?;
        let spec = &self.programs.get(&program).ok_or("gone")?.spec;
        let (prog, args) = argv.split_first().ok_or("empty command")?;
        let image = plan::Image::new(prog, &spec.env, spec.cwd.as_deref()).map_err(|e| e.to_string())?;
        let argv = plan::build_argv(prog, args, None, false).map_err(|e| e.to_string())?;
        match spawn::spawn(&self.ctx, &image, &argv, Stdio::Null) {
            Ok(spawned) => {
                let pid = spawned.pid.as_raw();
                self.probes.exec_pids.insert(pid, id);
                Ok(pid)
            }
            Err(e) => {
                if let spawn::SpawnError::Exec { pid, .. } = &e {
                    self.doomed.insert(pid.as_raw());
                }
                Err(e.describe(&image))
            }
        }
    }

    /// A reaped pid that was an exec probe: its status is the result.
    pub(super) fn on_probe_exit(&mut self, pid: i32, status: ExitStatus) -> bool {
        let Some(id) = self.probes.exec_pids.remove(&pid) else {
            return false;
        };
        if matches!(self.probes.attempts.get(&id), Some(Attempt::Exec { pid: p }) if *p == pid) {
            self.probes.attempts.remove(&id);
            self.timers.cancel(Timer::ProbeTimeout(id));
            let outcome = if status.success() {
                Outcome::Pass
            } else {
                Outcome::Fail(format!("the check {}", status.describe()))
            };
            self.attempt_done(id, outcome);
        }
        true
    }

    /// Readiness on a probe token: a tcp/http check or an fd pipe.
    pub(super) fn on_probe_event(&mut self, token: Token) {
        let id = InstanceId((token.0 - FIRST_PROBE) as u64);
        let outcome = match self.probes.attempts.get_mut(&id) {
            Some(Attempt::Net(check)) => check.on_event(),
            Some(Attempt::Fd(pipe)) => pipe.on_readable(),
            _ => None,
        };
        let Some(outcome) = outcome else { return };
        let fd = matches!(self.probes.attempts.get(&id), Some(Attempt::Fd(_)));
        self.cancel_attempt(id);
        if fd {
            match outcome {
                Outcome::Pass => self.mark_ready(id, ReadyBy::Fd),
                // The readiness deadline still decides.
                Outcome::Fail(reason) => log::warn!("{}: {reason}", self.label_of(id)),
            }
        } else {
            self.timers.cancel(Timer::ProbeTimeout(id));
            self.attempt_done(id, outcome);
        }
    }

    fn label_of(&self, id: InstanceId) -> String {
        match &self.driver {
            Driver::Run(core) => core.instance(id).map(|i| i.label.clone()).unwrap_or_default(),
            Driver::Spawn(_) => String::new(),
        }
    }

    /// One attempt ended: readiness passes or retries after its interval;
    /// health reports to the core and goes on after its interval.
    fn attempt_done(&mut self, id: InstanceId, outcome: Outcome) {
        let Some((stage, _)) = self.probe_stage(id) else {
            return;
        };
        let now = Instant::now();
        match stage {
            Stage::Ready(ready) => match outcome {
                Outcome::Pass => self.mark_ready(id, ready.kind.by()),
                Outcome::Fail(reason) => {
                    log::debug!("{} not ready yet: {reason}", self.label_of(id));
                    self.timers
                        .schedule(Timer::ProbeAttempt(id), self.coalesced(now, ready.interval));
                }
            },
            Stage::Health(health) => {
                let result = match outcome {
                    Outcome::Pass => Ok(()),
                    Outcome::Fail(reason) => Err(reason),
                };
                self.feed_probe(id, Input::Health(result));
                if self.probe_stage(id).is_some() {
                    self.timers
                        .schedule(Timer::ProbeAttempt(id), self.coalesced(now, health.interval));
                }
            }
        }
    }

    /// The next attempt is due.
    pub(super) fn on_probe_attempt(&mut self, id: InstanceId) {
        let now = Instant::now();
        match self.probe_stage(id) {
            Some((
                Stage::Ready(ReadySpec {
                    kind: ReadyKind::Probe(probe),
                    interval,
                    ..
                }),
                _,
            )) => {
                let limit = now + interval.max(Duration::from_secs(1));
                let deadline = self
                    .timers
                    .at(Timer::ReadyDeadline(id))
                    .map_or(limit, |d| d.min(limit));
                self.start_attempt(id, &probe, deadline);
            }
            Some((Stage::Health(health), _)) => self.start_attempt(id, &health.probe, now + health.timeout),
            _ => {}
        }
    }

    /// The attempt under way took too long.
    pub(super) fn on_probe_timeout(&mut self, id: InstanceId) {
        let stage = match self.probes.attempts.get(&id) {
            Some(Attempt::Net(check)) => check.stage(),
            Some(Attempt::Exec { .. }) => "running the check",
            _ => return,
        };
        let reason = format!("no answer in time ({stage})");
        self.cancel_attempt(id);
        self.attempt_done(id, Outcome::Fail(reason));
    }

    /// The readiness deadline passed.
    pub(super) fn on_ready_deadline(&mut self, id: InstanceId) {
        self.teardown_probes(id);
        self.feed_probe(id, Input::ReadyTimeout);
    }

    /// A missed watchdog ping is a health failure.
    pub(super) fn on_watchdog(&mut self, id: InstanceId) {
        let Some(watchdog) = self.watchdog_of(id) else {
            return;
        };
        self.feed_probe(
            id,
            Input::Health(Err(format!("no WATCHDOG=1 within {watchdog:?}"))),
        );
        if self.probe_stage_running(id) {
            self.timers
                .schedule(Timer::Watchdog(id), Instant::now() + watchdog);
        }
    }

    fn watchdog_of(&self, id: InstanceId) -> Option<Duration> {
        let Driver::Run(core) = &self.driver else {
            return None;
        };
        let program = core.instance(id)?.program;
        match &self.programs.get(&program)?.ready {
            Some(ReadySpec {
                kind: ReadyKind::Notify { watchdog },
                ..
            }) => *watchdog,
            _ => None,
        }
    }

    fn probe_stage_running(&self, id: InstanceId) -> bool {
        let Driver::Run(core) = &self.driver else {
            return false;
        };
        core.instance(id)
            .is_some_and(|i| matches!(i.phase, Phase::Running { ready: true, .. }))
    }

    /// The instance passed its readiness check: readiness ends, health
    /// checks and the watchdog begin.
    pub(super) fn mark_ready(&mut self, id: InstanceId, by: ReadyBy) {
        if !self.feed_probe(id, Input::Ready(by)) {
            return;
        }
        self.teardown_probes(id);
        let now = Instant::now();
        if let Some((Stage::Health(health), _)) = self.probe_stage(id) {
            self.timers
                .schedule(Timer::ProbeAttempt(id), self.coalesced(now, health.interval));
        }
        if let Some(w) = self.watchdog_of(id) {
            self.timers.schedule(Timer::Watchdog(id), now + w);
        }
    }

    fn feed_probe(&mut self, id: InstanceId, input: Input) -> bool {
        let Driver::Run(core) = &mut self.driver else {
            return false;
        };
        let mut actions = Vec::new();
        let changed = core.input(id, input, Instant::now(), &mut actions);
        self.execute(actions);
        changed
    }

    fn cancel_attempt(&mut self, id: InstanceId) {
        match self.probes.attempts.remove(&id) {
            Some(Attempt::Net(check)) => check.cancel(self.poll.registry()),
            Some(Attempt::Fd(mut pipe)) => {
                let _ = self.poll.registry().deregister(&mut pipe);
            }
            Some(Attempt::Exec { pid }) => {
                // Its own group; still unreaped, so the number is ours.
                // SAFETY: kill takes integers only.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            None => {}
        }
    }

    /// Everything probing this instance stops (it exits, is stopped, or is
    /// ready and readiness is over).
    pub(super) fn teardown_probes(&mut self, id: InstanceId) {
        self.cancel_attempt(id);
        for t in [
            Timer::ReadyDeadline(id),
            Timer::ProbeAttempt(id),
            Timer::ProbeTimeout(id),
            Timer::Watchdog(id),
        ] {
            self.timers.cancel(t);
        }
        if let Some(child) = self.children.values_mut().find(|c| c.instance == Some(id)) {
            child.ready_log = None;
        }
    }

    /// The sd_notify socket is readable: match each datagram's sender to an
    /// instance through its process group (instances lead their groups).
    pub(super) fn on_notify(&mut self) {
        let Some(sock) = self.probes.notify.as_mut() else {
            return;
        };
        let mut got = Vec::new();
        // Placed inside the closure: the sender (systemd-notify waits on a
        // barrier) is alive until its notification is dropped.
        let drained =
            sock.recv_all(|n| got.push((pgid_of(n.pid), n.pid, n.ready, n.status.clone(), n.watchdog)));
        self.probes.notify_more = matches!(drained, Ok(Drained::Budget));
        if let Err(e) = drained {
            log::warn!("sd_notify socket: {e}");
        }
        for (pgid, pid, ready, status, watchdog) in got {
            let id = match (&self.driver, pgid) {
                (Driver::Run(core), Some(g)) => core.instances().find(|i| i.pid() == Some(g)).map(|i| i.id),
                _ => None,
            };
            let Some(id) = id else {
                log::debug!("sd_notify from pid {pid}, which is no instance's");
                continue;
            };
            if let Some(text) = status {
                self.feed_probe(id, Input::NotifyStatus(text));
            }
            if ready {
                let notify = matches!(
                    self.probe_stage(id),
                    Some((
                        Stage::Ready(ReadySpec {
                            kind: ReadyKind::Notify { .. },
                            ..
                        }),
                        _
                    ))
                );
                if notify {
                    self.mark_ready(id, ReadyBy::Notify);
                }
            }
            if watchdog {
                if let Some(w) = self.watchdog_of(id) {
                    if self.probe_stage_running(id) {
                        self.timers.schedule(Timer::Watchdog(id), Instant::now() + w);
                    }
                }
            }
        }
    }

    /// Lines that matched a `ready = { log }` pattern this turn.
    pub(super) fn take_log_ready(&mut self) {
        for id in std::mem::take(&mut self.probes.log_ready) {
            self.mark_ready(id, ReadyBy::Log);
        }
    }
}
