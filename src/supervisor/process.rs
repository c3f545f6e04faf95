//! The process table: spawning children, reaping them, stopping them and
//! killing what is left. Both drivers share it; what an exit *means* is the
//! driver's business (`run`, or the spawn queue's counters).

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

use mio::unix::SourceFd;
use mio::Interest;
use nix::errno::Errno;
use signal_hook::consts::signal::*;

use super::{pipes, Driver, Supervisor};
use crate::children::{Child, Pipe, State, Stream};
use crate::config::probe::{HealthSpec, ReadyKind, ReadySpec};
use crate::config::ProgramSpec;
use crate::core::event::Event;
use crate::core::ids::{ChildId, InstanceId, ProgramId};
use crate::core::timers::Timer;
use crate::error::Error;
use crate::reaper::{self, ExitStatus, Reaped};
use crate::signals;
use crate::spawn::{self, plan, SpawnError, Stdio};

/// Spawns per loop turn before the loop looks at signals, exits and the
/// console again.
const SPAWN_BUDGET: usize = 8;

/// A program with everything its spawns share.
pub struct Program {
    pub spec: ProgramSpec,
    pub name: String,
    pub image: plan::Image,
    /// Run mode: per-instance variables (PS, PORT), as foreman sets them.
    instance_env: Option<InstanceEnv>,
    /// `ready = {...}` and `health = {...}` (run mode).
    pub ready: Option<ReadySpec>,
    pub health: Option<HealthSpec>,
}

/// Variables each instance of a run-mode program gets: `PS=web.2`, and
/// `PORT=base+n-1` unless the config sets PORT itself (foreman's
/// convention: 5000 for the first program, 5100 for the second, ...).
#[derive(Clone, Copy, Debug)]
pub struct InstanceEnv {
    pub port_base: Option<u32>,
}

impl Program {
    pub fn new(spec: ProgramSpec) -> Result<Program, Error> {
        // Names resolve here, before anything starts: an unknown user is a
        // config error, not a failed spawn.
        let attrs = plan::Attrs::resolve(&spec.attrs, &spec.name)?;
        let image = plan::Image::with_attrs(
            &spec.program,
            &spec.env,
            spec.cwd.as_deref(),
            spec.attrs.clear_env,
            attrs,
        )?;
        // Validate the arguments once, so a bad one is a usage error up front.
        plan::build_argv(&spec.program, &spec.args, Some(1), spec.counter_arg)?;
        Ok(Program {
            name: spec.name.clone(),
            spec,
            image,
            instance_env: None,
            ready: None,
            health: None,
        })
    }

    pub fn with_probes(mut self, ready: Option<ReadySpec>, health: Option<HealthSpec>) -> Program {
        self.ready = ready;
        self.health = health;
        self
    }

    pub fn with_instance_env(mut self, env: InstanceEnv) -> Program {
        self.instance_env = Some(env);
        self
    }

    /// Instance `n`'s image when it has variables of its own, built for
    /// each spawn over the program's image (nothing is kept per instance:
    /// with thousands of instances, a kept image each was most of brood's
    /// memory).
    fn instance_image(&self, n: u64) -> Result<Option<plan::Image>, Error> {
        let Some(ie) = self.instance_env else {
            return Ok(None);
        };
        let mut vars = vec![("PS".into(), format!("{}.{n}", self.name).into())];
        if let Some(base) = ie.port_base {
            vars.push(("PORT".into(), (u64::from(base) + n - 1).to_string().into()));
        }
        self.image.with_vars(&vars).map(Some)
    }
}

/// Orphaned grandchildren re-parent to brood, not to init: brood reaps them
/// (init may not, in a container) and a group then empties when its last
/// member dies, not when some init gets to it.
pub(super) fn become_subreaper() {
    // SAFETY: prctl with integer arguments only; no memory is shared.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        log::debug!(
            "cannot become a child subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Whether a process group still has a member that is brood's child. brood
/// is the subreaper, so every surviving member of a group whose leader it
/// reaped is its child or a descendant of one. Asking the kernel about its
/// own children (`waitid(P_PGID, WNOWAIT)`) never answers for a stranger
/// that was given the same number after the group emptied, as `kill(-pgid,
/// 0)` would.
pub(super) fn group_has_member(pgid: i32) -> bool {
    // SAFETY: siginfo_t is plain data; waitid with WNOWAIT|WNOHANG only
    // reports (and does not reap) a child of ours.
    let rc = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_PGID,
            pgid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WSTOPPED | libc::WCONTINUED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    rc == 0
}

/// Send `sig` to a child's process group, and to the child itself if it
/// left that group (it is brood's unreaped child, so its pid cannot be a
/// stranger's). False when neither exists any more.
pub(super) fn signal_child(pid: i32, sig: i32) -> bool {
    // SAFETY: kill and getpgid take integers only.
    unsafe {
        let group = libc::kill(-pid, sig) == 0;
        if libc::getpgid(pid) != pid {
            return libc::kill(pid, sig) == 0 || group;
        }
        group
    }
}

/// Send `sig` to a group that lingers after its leader was reaped, only if
/// brood can show it still has a member of its own.
fn signal_lingering(pgid: i32, sig: i32) -> bool {
    // SAFETY: kill takes integers only.
    group_has_member(pgid) && unsafe { libc::kill(-pgid, sig) == 0 }
}

/// Whether brood still has a child, reaped ones aside: any process the
/// kernel would let it wait for (`ECHILD` means none).
fn has_children() -> bool {
    // SAFETY: siginfo_t is plain data; WNOWAIT|WNOHANG only reports.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        ) == 0
    }
}

/// brood's live children as /proc lists them: every process whose parent
/// is brood. None when /proc cannot tell (not mounted, or another PID
/// namespace's, where /proc/self is not brood's pid): then nobody can be
/// named safely.
fn children_in_proc() -> Option<Vec<(i32, String)>> {
    let me = std::process::id() as i32;
    let own = std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse::<i32>().ok()));
    if own != Some(me) {
        return None;
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let mut fields = stat[close + 1..].split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|f| f.parse::<i32>().ok());
        // A zombie is only waiting to be reaped.
        if ppid == Some(me) && state != Some("Z") {
            found.push((pid, stat[open + 1..close].to_string()));
        }
    }
    Some(found)
}

impl Supervisor {
    /// Spawn mode: whether the queue has a spawn it may make now.
    pub(super) fn spawn_due(&self) -> bool {
        let Driver::Spawn(queue) = &self.driver else {
            return false;
        };
        self.shutdown.is_none()
            && !queue.starved
            && queue.queued > 0
            && queue
                .jobs
                .is_none_or(|jobs| self.alive + self.doomed.len() < jobs)
    }

    /// Spawn mode: start what the queue holds, within `-j` and within a
    /// per-turn budget, so that a burst never keeps the loop from reaping,
    /// signals and the console (the loop comes back at once while more is
    /// due).
    pub(super) fn start_queued(&mut self) {
        for _ in 0..SPAWN_BUDGET {
            if !self.spawn_due() {
                return;
            }
            let Driver::Spawn(queue) = &mut self.driver else {
                return;
            };
            if queue.counter_spent {
                log::error!(
                    "cannot spawn another child: the counter is at its maximum ({}) and would wrap",
                    u64::MAX
                );
                queue.queued = 0;
                return;
            }
            queue.queued -= 1;
            let n = queue.next_n;
            match n.checked_add(1) {
                Some(next) => queue.next_n = next,
                None => queue.counter_spent = true,
            }
            if self.spawn_child(ProgramId(0), n, None).is_none() && self.starved() {
                // Put the request back, counter and all.
                if let Driver::Spawn(q) = &mut self.driver {
                    q.queued += 1;
                    q.next_n = n;
                    q.counter_spent = false;
                }
                return;
            }
        }
    }

    fn starved(&self) -> bool {
        matches!(&self.driver, Driver::Spawn(q) if q.starved)
    }

    /// Processes or fds that brood will get back by reaping or draining.
    fn holds_resources(&self) -> bool {
        self.alive > 0 || !self.doomed.is_empty() || !self.children.is_empty()
    }

    /// Something came back (a child reaped, a pipe closed): a starved
    /// spawn queue may try again.
    pub(super) fn resources_freed(&mut self) {
        if let Driver::Spawn(q) = &mut self.driver {
            q.starved = false;
        }
    }

    /// Fork and exec instance `n` of a program. Returns the child's id and
    /// pid, or None when it could not be started (already reported).
    pub(super) fn spawn_child(
        &mut self,
        program: ProgramId,
        n: u64,
        instance: Option<InstanceId>,
    ) -> Option<(ChildId, i32)> {
        let prog = self.programs.get(&program)?;
        let own_image = match prog.instance_image(n) {
            Ok(image) => image,
            Err(e) => {
                log::error!("{}.{n}: {e}", prog.name);
                self.stats.spawn_failed += 1;
                return None;
            }
        };
        let image = own_image.as_ref().unwrap_or(&prog.image);
        let label = format!("{}.{}", prog.name, n);
        self.width = self.width.max(label.len());
        let argv = match plan::build_argv(
            &prog.spec.program,
            &prog.spec.args,
            Some(n),
            prog.spec.counter_arg,
        ) {
            Ok(a) => a,
            Err(e) => {
                log::error!("{label}: {e}");
                self.stats.spawn_failed += 1;
                return None;
            }
        };
        let stdio = if self.opts.output.inherit {
            Stdio::Inherit
        } else {
            Stdio::Capture
        };
        // s6's notification-fd: the write end goes to the child as fd N.
        let mut ready_pipe = None;
        let mut extra = None;
        if let (
            Some(_),
            Some(ReadySpec {
                kind: ReadyKind::Fd(fd),
                ..
            }),
        ) = (instance, &prog.ready)
        {
            match crate::probe::fd::ready_pipe(*fd) {
                Ok((pipe, end)) => {
                    ready_pipe = Some(pipe);
                    extra = Some(end);
                }
                Err(e) => log::error!("{label}: cannot make its notification fd: {e}"),
            }
        }
        let ready_log = match (&prog.ready, instance) {
            (
                Some(ReadySpec {
                    kind: ReadyKind::Log(m),
                    ..
                }),
                Some(_),
            ) => Some(m.clone()),
            _ => None,
        };
        match spawn::spawn_with(&self.ctx, image, &argv, stdio, extra) {
            Ok(spawned) => {
                let pid = spawned.pid.as_raw();
                let name = prog.name.clone();
                if let (Some(pipe), Some(iid)) = (ready_pipe, instance) {
                    self.watch_ready_pipe(iid, pipe);
                }
                let id = ChildId(self.child_ids.take());
                let mut pipes = [None, None];
                for (stream, fd) in [(Stream::Stdout, spawned.stdout), (Stream::Stderr, spawned.stderr)] {
                    let Some(fd) = fd else { continue };
                    let raw = fd.as_raw_fd();
                    let token = pipes::pipe_token(id, stream);
                    // A terminal is also written (`ctl attach`'s keys):
                    // its writability resumes a stalled input.
                    let interest = if spawned.tty {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    if let Err(e) = self
                        .poll
                        .registry()
                        .register(&mut SourceFd(&raw), token, interest)
                    {
                        log::error!("cannot watch the output of {label}: {e}");
                    }
                    pipes[stream as usize] = Some(Pipe {
                        fd,
                        framer: Default::default(),
                    });
                }
                self.stats.spawned += 1;
                log::info!("spawned {label} pid {pid}");
                self.events.emit(&Event::Spawn {
                    label: label.clone(),
                    name,
                    n,
                    pid,
                });
                self.children.insert(
                    id,
                    Box::new(Child {
                        id,
                        program,
                        n,
                        label,
                        pid,
                        started: Instant::now(),
                        state: State::Running,
                        pipes,
                        prefix: Default::default(),
                        stop_requested: false,
                        killed: false,
                        instance,
                        stdin: spawned.stdin,
                        ready_log,
                        tty: spawned.tty,
                        attached: None,
                    }),
                );
                self.by_pid.insert(pid, id);
                self.alive += 1;
                Some((id, pid))
            }
            // Out of fds or processes while brood still holds some (live
            // children, unreaped failed ones, pipes not yet at EOF): they
            // come back, so the spawn waits instead of failing.
            Err(SpawnError::Fork(e))
                if instance.is_none()
                    && self.holds_resources()
                    && matches!(e, Errno::EMFILE | Errno::ENFILE | Errno::EAGAIN | Errno::ENOMEM) =>
            {
                if let Driver::Spawn(q) = &mut self.driver {
                    if q.starve_warned {
                        log::debug!(
                            "cannot spawn {label} yet ({}): waiting for a child to exit",
                            e.desc()
                        );
                    } else {
                        log::warn!(
                            "cannot spawn {label} yet ({}): waiting for children to exit (said once)",
                            e.desc()
                        );
                        q.starve_warned = true;
                    }
                    q.starved = true;
                }
                None
            }
            Err(err) => {
                if let SpawnError::Exec { pid, .. } = err {
                    self.doomed.insert(pid.as_raw());
                }
                let message = err.describe(image);
                log::error!("{message}");
                self.stats.spawn_failed += 1;
                self.events.emit(&Event::SpawnFailed {
                    label,
                    name: prog.name.clone(),
                    n,
                    stage: err.stage(),
                    errno: err.errno() as i32,
                    error: message,
                });
                None
            }
        }
    }

    // ----- reaping ---------------------------------------------------------

    pub(super) fn reap(&mut self) {
        let mut reaped = Vec::new();
        reaper::reap_all(|r| reaped.push(r));
        let reaped_at = SystemTime::now();
        for r in reaped {
            match r {
                Reaped::Exited { pid, status } => self.on_exit(pid, status, reaped_at),
                Reaped::Stopped { pid, signal } => {
                    if let Some(child) = self.by_pid.get(&pid).and_then(|id| self.children.get_mut(id)) {
                        log::info!("{} pid {pid} stopped by {}", child.label, signals::name(signal));
                        if child.state == State::Running {
                            child.state = State::Paused(signal);
                        }
                    }
                }
                Reaped::Continued { pid } => {
                    if let Some(child) = self.by_pid.get(&pid).and_then(|id| self.children.get_mut(id)) {
                        log::info!("{} pid {pid} continued", child.label);
                        if matches!(child.state, State::Paused(_)) {
                            child.state = State::Running;
                        }
                    }
                }
            }
        }
    }

    fn on_exit(&mut self, pid: i32, status: ExitStatus, reaped_at: SystemTime) {
        if self.doomed.remove(&pid) {
            self.resources_freed();
            return;
        }
        // (A leftover may be a probe's check still running at the end.)
        let leftover = self.leftovers.pids.remove(&pid);
        if self.on_probe_exit(pid, status) {
            return;
        }
        if leftover {
            log::info!("leftover pid {pid} {}", status.describe());
            return;
        }
        let Some(id) = self.by_pid.remove(&pid) else {
            log::debug!("reaped pid {pid}, not one of ours");
            return;
        };
        let Some(child) = self.children.get_mut(&id) else {
            return;
        };
        child.state = State::Exited(status);
        // What is left of its group reads EOF on stdin now.
        child.stdin = None;
        self.alive -= 1;
        let runtime = child.uptime(Instant::now());
        if child.stop_requested {
            self.stats.stopped += 1;
        } else if status.success() {
            self.stats.succeeded += 1;
        } else {
            self.stats.failed += 1;
        }
        log::info!("{} pid {pid} {}", child.label, status.describe());
        self.events.emit_at(
            reaped_at,
            &Event::exit(&child.label, pid, status, runtime.as_millis() as u64),
        );
        let kill_at = self.timers.at(Timer::Kill(id));
        self.timers.cancel(Timer::Kill(id));
        if group_has_member(pid) {
            // The leader is gone but its group is not (a shell's children,
            // a daemon's workers). The group got its stop signal once
            // already if brood stopped it; SIGKILL follows at the same
            // deadline.
            self.lingering.insert(pid, child.label.clone());
            if let Some(t) = kill_at {
                self.timers.schedule(Timer::KillGroup(pid), t);
            }
        }
        let instance = child.instance;
        if !child.has_pipes() {
            self.children.remove(&id);
        }
        self.resources_freed();
        if let Some(instance) = instance {
            self.on_instance_exit(instance, status, runtime);
        }
    }

    // ----- stopping --------------------------------------------------------

    pub(super) fn grace_for(&self, program: ProgramId) -> Duration {
        self.programs
            .get(&program)
            .map_or(self.opts.grace, |p| p.spec.stop_timeout)
    }

    /// Send a child's group its stop signal, once; SIGKILL follows after
    /// `grace`.
    pub(super) fn stop_child(&mut self, id: ChildId, grace: Duration) {
        let Some(child) = self.children.get_mut(&id) else {
            return;
        };
        if !child.state.leader_alive() || child.stop_requested {
            return;
        }
        let sig = self
            .programs
            .get(&child.program)
            .map_or(SIGTERM, |p| p.spec.stop_signal);
        child.stop_requested = true;
        child.state = State::Stopping;
        self.timers.schedule(Timer::Kill(id), Instant::now() + grace);
        signal_child(child.pid, sig);
        // A stopped (SIGSTOP) group would never act on its stop signal.
        if sig != SIGCONT {
            signal_child(child.pid, SIGCONT);
        }
        log::debug!(
            "sent {} to {} (pgid {})",
            signals::name(sig),
            child.label,
            child.pid
        );
        self.events.emit(&Event::signal(&child.label, child.pid, sig));
    }

    /// Shutdown: groups whose leader is gone get the stop signal too.
    pub(super) fn stop_lingering(&mut self) {
        let lingering: Vec<(i32, String)> = self.lingering.iter().map(|(p, l)| (*p, l.clone())).collect();
        for (pgid, label) in lingering {
            if self.timers.is_set(Timer::KillGroup(pgid)) {
                continue; // stopped already, SIGKILL is on its way
            }
            if signal_lingering(pgid, SIGTERM) {
                signal_lingering(pgid, SIGCONT);
                self.events.emit(&Event::signal(&label, pgid, SIGTERM));
            }
        }
    }

    /// A child's grace is over: SIGKILL its group.
    pub(super) fn kill_child(&mut self, id: ChildId) {
        let Some(c) = self.children.get_mut(&id) else {
            return;
        };
        if !c.state.leader_alive() || c.killed {
            return;
        }
        c.killed = true;
        let (pid, label) = (c.pid, c.label.clone());
        if signal_child(pid, SIGKILL) {
            log::info!("{label} pid {pid} did not stop in time: sent SIGKILL");
            self.events.emit(&Event::signal(&label, pid, SIGKILL));
        }
    }

    /// A lingering group's grace is over: SIGKILL it if it is still ours.
    pub(super) fn kill_lingering(&mut self, pgid: i32) {
        let Some(label) = self.lingering.get(&pgid).cloned() else {
            return;
        };
        if signal_lingering(pgid, SIGKILL) {
            log::info!("{label} group {pgid} did not stop in time: sent SIGKILL");
            self.events.emit(&Event::signal(&label, pgid, SIGKILL));
        }
    }

    /// SIGKILL every group that still has a member, leaders gone or not.
    pub(super) fn escalate(&mut self) {
        let ids: Vec<ChildId> = self.children.keys().copied().collect();
        for id in ids {
            self.timers.cancel(Timer::Kill(id));
            self.kill_child(id);
        }
        let groups: Vec<i32> = self.lingering.keys().copied().collect();
        for pgid in groups {
            self.timers.cancel(Timer::KillGroup(pgid));
            self.kill_lingering(pgid);
        }
        if !self.leftovers.pids.is_empty() {
            self.timers.cancel(Timer::KillLeftovers);
            self.kill_leftovers();
        }
        self.timers.cancel(Timer::ShutdownGrace);
        if let Some(sd) = self.shutdown.as_mut() {
            sd.escalated = true;
        }
    }

    // ----- leftovers -------------------------------------------------------

    /// Shutdown, every known child reaped: brood's other children are
    /// leftovers, processes that left their group (`setsid`) and came back
    /// to brood, the subreaper, when their parent died. They get SIGTERM,
    /// named, then SIGKILL after the grace. True once there are none; false
    /// while brood waits for them.
    pub(super) fn stop_leftovers(&mut self) -> bool {
        if !self.leftovers.pids.is_empty() {
            return false; // signalled; their exits come as SIGCHLD
        }
        if !has_children() {
            return true;
        }
        let Some(found) = children_in_proc() else {
            if !self.leftovers.warned {
                log::warn!(
                    "brood still has children outside every group it knows, and cannot name them without \
                     its own /proc: leaving them"
                );
                self.leftovers.warned = true;
            }
            return true;
        };
        let escalated = self.shutdown.as_ref().is_some_and(|sd| sd.escalated);
        let sig = if escalated || self.leftovers.killed {
            SIGKILL
        } else {
            SIGTERM
        };
        for (pid, comm) in found {
            if self.by_pid.contains_key(&pid) || self.doomed.contains(&pid) {
                continue;
            }
            // An unreaped child of brood: its pid cannot be a stranger's.
            // SAFETY: kill takes integers only.
            if unsafe { libc::kill(pid, sig) } != 0 {
                continue;
            }
            if sig != SIGKILL {
                // SAFETY: as above.
                unsafe { libc::kill(pid, SIGCONT) };
            }
            log::warn!(
                "leftover pid {pid} ({comm}) outlived its group: sent {}",
                signals::name(sig)
            );
            self.events.emit(&Event::signal("leftover", pid, sig));
            self.leftovers.pids.insert(pid);
        }
        if self.leftovers.pids.is_empty() {
            // Only unreaped zombies, about to be reaped.
            return true;
        }
        if sig == SIGTERM {
            let grace = self.opts.grace;
            self.timers.schedule(Timer::KillLeftovers, Instant::now() + grace);
        }
        false
    }

    /// The leftovers' grace is over: SIGKILL those still here (each is an
    /// unreaped child, so the pid is still theirs).
    pub(super) fn kill_leftovers(&mut self) {
        self.leftovers.killed = true;
        let pids: Vec<i32> = self.leftovers.pids.iter().copied().collect();
        for pid in pids {
            // SAFETY: kill takes integers only.
            if unsafe { libc::kill(pid, SIGKILL) } == 0 {
                log::warn!("leftover pid {pid} did not stop in time: sent SIGKILL");
                self.events.emit(&Event::signal("leftover", pid, SIGKILL));
            }
        }
    }
}
