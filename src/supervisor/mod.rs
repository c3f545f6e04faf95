//! The event loop: one thread, one `epoll`, everything brood does.
//!
//! It owns the signal self-pipe, stdin (the console), every child's output
//! pipes and brood's own stdout/stderr writers. Its timeout is the nearest
//! deadline (a kill escalation, a drain limit), so an idle brood sleeps in
//! `epoll_wait` and uses no CPU. Shutdown is a state entered once; only the
//! top of [`Supervisor::run`] ends the loop.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events as MioEvents, Interest, Poll, Token};
use serde_json::json;
use signal_hook::consts::signal::*;
use signal_hook_mio::v1_0::Signals;

use crate::children::{self, Child, Pipe, State, Stream};
use crate::config::{OutputOptions, ProgramSpec};
use crate::console::{self, Command, LineReader};
use crate::error::Error;
use crate::events::Events;
use crate::logging;
use crate::output::{self, Sink};
use crate::reaper::{self, ExitStatus, Reaped};
use crate::signals;
use crate::spawn::{self, plan, SpawnContext, SpawnError, Stdio};
use nix::errno::Errno;

mod control;
mod run_mode;

pub use control::ControlServer;
pub use run_mode::RunState;

const SIGNALS: Token = Token(0);
const STDIN: Token = Token(1);
const STDOUT: Token = Token(2);
const STDERR: Token = Token(3);
const FIRST_PIPE: usize = 16;

/// A pipe's default capacity: one read takes all a pipe holds, and the
/// buffer stays in cache (1 MiB reads measured slower).
const DEFAULT_PIPE: usize = 64 * 1024;

/// Reads per loop turn before the loop polls again, so a flood from the
/// children never delays signals or the console.
const READ_BUDGET: usize = 128;

/// After the last leader is gone, how long pipes held open by processes
/// outside every group brood knows may keep brood waiting.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

fn pipe_token(id: u64, stream: Stream) -> Token {
    Token(FIRST_PIPE + (id as usize) * 2 + stream as usize)
}

fn token_pipe(token: Token) -> (u64, Stream) {
    let i = token.0 - FIRST_PIPE;
    let stream = if i % 2 == 0 {
        Stream::Stdout
    } else {
        Stream::Stderr
    };
    ((i / 2) as u64, stream)
}

/// A program with everything its spawns share.
pub struct Program {
    pub spec: ProgramSpec,
    pub name: String,
    pub image: plan::Image,
    /// Run mode: per-instance variables (PS, PORT), as foreman sets them.
    instance_env: Option<InstanceEnv>,
    /// Images with those variables, built on first use of each instance.
    instances: HashMap<u64, plan::Image>,
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
        let image = plan::Image::new(&spec.program, &spec.env, spec.cwd.as_deref())?;
        // Validate the arguments once, so a bad one is a usage error up front.
        plan::build_argv(&spec.program, &spec.args, Some(1), spec.counter_arg)?;
        Ok(Program {
            name: spec.name.clone(),
            spec,
            image,
            instance_env: None,
            instances: HashMap::new(),
        })
    }

    pub fn with_instance_env(mut self, env: InstanceEnv) -> Program {
        self.instance_env = Some(env);
        self
    }

    /// Build instance `n`'s image if it has variables of its own.
    fn prepare(&mut self, n: u64) -> Result<(), Error> {
        let Some(ie) = self.instance_env else {
            return Ok(());
        };
        if self.instances.contains_key(&n) {
            return Ok(());
        }
        let mut env = self.spec.env.clone();
        env.push(("PS".into(), format!("{}.{n}", self.name).into()));
        if let Some(base) = ie.port_base {
            env.push(("PORT".into(), (u64::from(base) + n - 1).to_string().into()));
        }
        let image = plan::Image::new(&self.spec.program, &env, self.spec.cwd.as_deref())?;
        self.instances.insert(n, image);
        Ok(())
    }

    fn image(&self, n: u64) -> &plan::Image {
        self.instances.get(&n).unwrap_or(&self.image)
    }
}

/// What decides when children are started: the spawn loop's queue.
pub struct SpawnQueue {
    /// Spawns wanted and not yet made.
    pub queued: u64,
    pub next_n: u64,
    pub jobs: Option<usize>,
    /// `-n`: finish once the queue is empty and every child is gone.
    pub batch: bool,
    /// The last spawn ran out of fds or processes while children were
    /// alive: wait for one to exit, then try again (nothing is dropped).
    pub starved: bool,
    pub starve_warned: bool,
}

/// What decides when children start and what their exits mean.
pub enum Mode {
    /// `brood spawn`: a queue of spawn requests with a counter.
    Spawn(SpawnQueue),
    /// `brood run`: instances of programs, restarted by policy.
    Run(RunState),
}

#[derive(Default, Debug, Clone, Copy)]
pub struct Stats {
    pub spawned: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub spawn_failed: u64,
    pub stopped: u64,
}

struct Shutdown {
    kill_at: Instant,
    escalated: bool,
    drain_until: Option<Instant>,
}

struct ConsoleIn {
    reader: LineReader,
    /// epoll refuses regular files and /dev/null: those are read every turn.
    pollable: bool,
    open: bool,
    /// Reading stopped at the per-turn limit with input left: epoll is
    /// edge-triggered and will not say so again.
    more: bool,
}

pub struct Options {
    pub output: OutputOptions,
    pub console: bool,
    pub grace: Duration,
    pub pdeathsig: bool,
}

pub struct Outcome {
    pub code: i32,
}

pub struct Supervisor {
    poll: Poll,
    signals: Signals,
    ctx: SpawnContext,
    programs: Vec<Program>,
    opts: Options,
    mode: Mode,
    children: HashMap<u64, Child>,
    by_pid: HashMap<i32, u64>,
    next_id: u64,
    alive: usize,
    /// Children whose exec failed: reaped silently.
    doomed: HashSet<i32>,
    /// Groups whose leader is reaped but that still had members: pgid to label.
    lingering: HashMap<i32, String>,
    ready: VecDeque<Token>,
    /// Pending SIGKILL escalations, soonest first: the loop reads the
    /// nearest one without walking the whole process table.
    kill_queue: BTreeSet<(Instant, u64)>,
    stdout: Sink,
    stderr: Sink,
    /// stdout and stderr are one pipe or terminal (`2>&1`): one writer for
    /// both, so a partial write of one can never be cut into by the other.
    shared_streams: bool,
    width: usize,
    events: Events,
    console: Option<ConsoleIn>,
    shutdown: Option<Shutdown>,
    stats: Stats,
    scratch: Vec<u8>,
    /// `brood run`'s control socket and output rings.
    control: Option<ControlServer>,
}

impl Supervisor {
    pub fn new(
        programs: Vec<Program>,
        opts: Options,
        mode: Mode,
        events: Events,
        width_hint: usize,
        mut control: Option<ControlServer>,
    ) -> Result<Supervisor, Error> {
        let poll = Poll::new().map_err(|e| Error::io("cannot create epoll", e))?;
        let mut signals = signals::register(signals::SUPERVISOR_SIGNALS)
            .map_err(|e| Error::io("cannot install signal handlers", e))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| Error::io("cannot watch signals", e))?;
        // Grandchildren orphaned by a child re-parent to brood, not to init:
        // brood reaps them (init may not, in a container) and a group then
        // empties when its last member dies, not when some init gets to it.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            log::debug!("cannot become a child subreaper: {}", io::Error::last_os_error());
        }
        if let Some(ctl) = control.as_mut() {
            poll.registry()
                .register(&mut ctl.bound.listener, control::LISTENER, Interest::READABLE)
                .map_err(|e| Error::io("cannot watch the control socket", e))?;
        }
        let reset = signals::non_default_dispositions();
        let pdeathsig = opts.pdeathsig.then_some(SIGTERM);
        let ctx = SpawnContext::new(reset, pdeathsig).map_err(|e| Error::io("cannot open /dev/null", e))?;

        let stdout = Sink::open(1);
        let shared_streams = output::same_file(1, 2);
        let stderr = if shared_streams {
            Sink::unused()
        } else {
            Sink::open(2)
        };
        for (sink, token) in [(&stdout, STDOUT), (&stderr, STDERR)] {
            if sink.pollable() {
                let fd = sink.raw_fd();
                // Failure here only costs the early notice of a closed reader.
                let _ = poll
                    .registry()
                    .register(&mut SourceFd(&fd), token, Interest::WRITABLE);
            }
        }
        let console = if opts.console {
            let pollable = poll
                .registry()
                .register(&mut SourceFd(&0), STDIN, Interest::READABLE)
                .is_ok();
            Some(ConsoleIn {
                reader: LineReader::default(),
                pollable,
                open: true,
                more: false,
            })
        } else {
            None
        };
        Ok(Supervisor {
            poll,
            signals,
            ctx,
            programs,
            opts,
            mode,
            children: HashMap::new(),
            by_pid: HashMap::new(),
            next_id: 0,
            alive: 0,
            doomed: HashSet::new(),
            lingering: HashMap::new(),
            ready: VecDeque::new(),
            kill_queue: BTreeSet::new(),
            stdout,
            stderr,
            shared_streams,
            width: width_hint,
            events,
            console,
            shutdown: None,
            stats: Stats::default(),
            scratch: vec![0u8; DEFAULT_PIPE],
            control,
        })
    }

    /// Run until shutdown is complete. Returns the stats and the exit code.
    pub fn run(mut self) -> Outcome {
        let mut events = MioEvents::with_capacity(1024);
        loop {
            self.start_queued();
            self.check_done();
            self.pump();
            if self.finished() {
                break;
            }
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("epoll failed: {e}");
                    self.begin_shutdown("error".to_string());
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signals(),
                    STDIN => self.read_console(),
                    STDOUT => {
                        if event.is_error() || event.is_write_closed() {
                            self.on_stdout_closed();
                        } else if event.is_writable() {
                            self.stdout.writable = true;
                        }
                    }
                    STDERR => {
                        if event.is_error() || event.is_write_closed() {
                            self.stderr.close();
                        } else if event.is_writable() {
                            self.stderr.writable = true;
                        }
                    }
                    control::LISTENER => self.accept_clients(),
                    token if token.0 >= control::FIRST_CLIENT => self.on_client(token),
                    token => self.ready.push_back(token),
                }
            }
            self.on_deadlines(Instant::now());
        }
        self.finish()
    }

    // ----- spawning -------------------------------------------------------

    fn start_queued(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        if matches!(self.mode, Mode::Run(_)) {
            self.start_due_slots(Instant::now());
            return;
        }
        loop {
            let Mode::Spawn(queue) = &mut self.mode else {
                return;
            };
            if queue.starved
                || queue.queued == 0
                || queue
                    .jobs
                    .is_some_and(|jobs| self.alive + self.doomed.len() >= jobs)
            {
                return;
            }
            queue.queued -= 1;
            let n = queue.next_n;
            queue.next_n += 1;
            if self.spawn_one(0, n, None).is_none() && self.starved() {
                // Put the request back, counter and all.
                if let Mode::Spawn(q) = &mut self.mode {
                    q.queued += 1;
                    q.next_n = n;
                }
                return;
            }
        }
    }

    /// Fork and exec one instance. Returns the child's id, or None when it
    /// could not be started (already reported).
    fn spawn_one(&mut self, program: usize, n: u64, slot: Option<usize>) -> Option<u64> {
        if let Err(e) = self.programs[program].prepare(n) {
            log::error!("{}.{n}: {e}", self.programs[program].name);
            self.stats.spawn_failed += 1;
            return None;
        }
        let prog = &self.programs[program];
        let label = format!("{}.{}", prog.name, n);
        self.width = self.width.max(label.len());
        let counter = Some(n);
        let argv = match plan::build_argv(
            &prog.spec.program,
            &prog.spec.args,
            counter,
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
        match spawn::spawn(&self.ctx, prog.image(n), &argv, stdio) {
            Ok(spawned) => {
                let pid = spawned.pid.as_raw();
                let id = self.next_id;
                self.next_id += 1;
                let mut pipes = [None, None];
                for (stream, fd) in [(Stream::Stdout, spawned.stdout), (Stream::Stderr, spawned.stderr)] {
                    if let Some(fd) = fd {
                        let raw = fd.as_raw_fd();
                        let token = pipe_token(id, stream);
                        if let Err(e) =
                            self.poll
                                .registry()
                                .register(&mut SourceFd(&raw), token, Interest::READABLE)
                        {
                            log::error!("cannot watch the output of {label}: {e}");
                        }
                        pipes[stream as usize] = Some(Pipe {
                            fd,
                            framer: Default::default(),
                        });
                    }
                }
                self.stats.spawned += 1;
                log::info!("spawned {label} pid {pid}");
                self.events.emit(
                    "spawn",
                    json!({"label": label, "name": prog.name, "n": n, "pid": pid}),
                );
                self.children.insert(
                    id,
                    Child {
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
                        kill_at: None,
                        killed: false,
                        slot,
                    },
                );
                self.by_pid.insert(pid, id);
                self.alive += 1;
                Some(id)
            }
            Err(SpawnError::Fork(e))
                if slot.is_none()
                    && self.alive > 0
                    && matches!(e, Errno::EMFILE | Errno::ENFILE | Errno::EAGAIN | Errno::ENOMEM) =>
            {
                if let Mode::Spawn(q) = &mut self.mode {
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
                let message = err.describe(prog.image(n));
                log::error!("{message}");
                self.stats.spawn_failed += 1;
                self.events.emit(
                    "spawn_failed",
                    json!({"label": label, "name": prog.name, "n": n, "stage": err.stage(),
                           "errno": err.errno() as i32, "error": message}),
                );
                None
            }
        }
    }

    fn starved(&self) -> bool {
        matches!(&self.mode, Mode::Spawn(q) if q.starved)
    }

    /// `-n`: the batch is done when nothing is queued and nothing is left.
    /// `run`: done when every instance is down for good.
    fn check_done(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        let done = match &self.mode {
            Mode::Spawn(q) => q.batch && q.queued == 0 && self.alive == 0 && self.doomed.is_empty(),
            Mode::Run(r) => r.all_settled() && self.alive == 0,
        };
        if done {
            self.begin_shutdown("done".to_string());
        }
    }

    // ----- signals and reaping ---------------------------------------------

    fn on_signals(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            match sig {
                SIGCHLD => self.reap(),
                SIGINT | SIGTERM | SIGHUP => {
                    let escalated = self.shutdown.as_ref().map(|sd| sd.escalated);
                    if sig == SIGHUP && escalated.is_some() {
                        // Already shutting down: a hangup adds nothing.
                    } else if escalated == Some(true) {
                        // Children are SIGKILLed already; what still holds
                        // brood is output nobody reads. Asked again: drop it.
                        log::warn!("{} again: dropping output nobody reads", signals::name(sig));
                        self.abandon_output();
                    } else if escalated == Some(false) {
                        log::info!("second {}: killing every child now", signals::name(sig));
                        self.escalate();
                    } else {
                        self.begin_shutdown(format!("signal:{}", signals::name(sig)));
                    }
                }
                _ => {}
            }
        }
    }

    fn reap(&mut self) {
        let mut reaped = Vec::new();
        reaper::reap_all(|r| reaped.push(r));
        let reaped_at = std::time::SystemTime::now();
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

    fn on_exit(&mut self, pid: i32, status: ExitStatus, reaped_at: std::time::SystemTime) {
        if self.doomed.remove(&pid) {
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
        if let Some(t) = child.kill_at.take() {
            self.kill_queue.remove(&(t, id));
        }
        self.alive -= 1;
        if let Mode::Spawn(q) = &mut self.mode {
            q.starved = false;
        }
        let runtime = child.uptime(Instant::now());
        if child.stop_requested {
            self.stats.stopped += 1;
        } else if status.success() {
            self.stats.succeeded += 1;
        } else {
            self.stats.failed += 1;
        }
        log::info!("{} pid {pid} {}", child.label, status.describe());
        let (code, signal, core) = match status {
            ExitStatus::Code(c) => (Some(c), None, false),
            ExitStatus::Signal { signal, core } => (None, Some(signals::name(signal)), core),
        };
        self.events.emit_at(
            reaped_at,
            "exit",
            json!({"label": child.label, "pid": pid, "code": code, "signal": signal,
                   "core": core, "runtime_ms": runtime.as_millis() as u64}),
        );
        if children::group_alive(pid) {
            self.lingering.insert(pid, child.label.clone());
            if self.shutdown.is_some() {
                children::signal_group(pid, self.programs[child.program].spec.stop_signal);
            }
        }
        let (slot, stop_requested) = (child.slot, child.stop_requested);
        if !child.has_pipes() {
            self.children.remove(&id);
        }
        if let Some(slot) = slot {
            self.on_slot_exit(slot, Some(status), runtime, stop_requested);
        }
    }

    // ----- stopping --------------------------------------------------------

    /// Send a child's group its stop signal; SIGKILL follows after `grace`.
    fn stop_child(&mut self, id: u64, grace: Duration) {
        let Some(child) = self.children.get_mut(&id) else {
            return;
        };
        if !child.state.leader_alive() || child.state == State::Stopping {
            return;
        }
        let spec = &self.programs[child.program].spec;
        let sig = spec.stop_signal;
        child.stop_requested = true;
        child.state = State::Stopping;
        let deadline = Instant::now() + grace;
        child.kill_at = Some(deadline);
        self.kill_queue.insert((deadline, id));
        children::signal_group(child.pid, sig);
        // A stopped (SIGSTOP) group would never act on SIGTERM.
        children::signal_group(child.pid, SIGCONT);
        log::debug!(
            "sent {} to {} (pgid {})",
            signals::name(sig),
            child.label,
            child.pid
        );
        self.events.emit(
            "signal",
            json!({"label": child.label, "pid": child.pid, "signal": signals::name(sig)}),
        );
    }

    fn begin_shutdown(&mut self, reason: String) {
        if self.shutdown.is_some() {
            return;
        }
        log::info!("shutting down ({reason})");
        self.events.emit("shutdown", json!({"reason": reason}));
        match &mut self.mode {
            Mode::Spawn(q) => q.queued = 0,
            Mode::Run(r) => r.on_shutdown(reason != "done"),
        }
        let now = Instant::now();
        let mut longest = Duration::ZERO;
        let ids: Vec<u64> = self.children.keys().copied().collect();
        for id in ids {
            let program = self.children[&id].program;
            let grace = self.grace_for(program);
            longest = longest.max(grace);
            self.stop_child(id, grace);
        }
        let grace = self.opts.grace;
        longest = longest.max(grace);
        let lingering: Vec<(i32, String)> = self.lingering.iter().map(|(p, l)| (*p, l.clone())).collect();
        for (pgid, label) in lingering {
            if children::signal_group(pgid, SIGTERM) {
                children::signal_group(pgid, SIGCONT);
                self.events.emit(
                    "signal",
                    json!({"label": label, "pid": pgid, "signal": "SIGTERM"}),
                );
            }
        }
        self.shutdown = Some(Shutdown {
            kill_at: now + longest,
            escalated: false,
            drain_until: None,
        });
        if let Some(c) = self.console.as_mut() {
            if c.open && c.pollable {
                let _ = self.poll.registry().deregister(&mut SourceFd(&0));
            }
            c.open = false;
        }
    }

    fn grace_for(&self, program: usize) -> Duration {
        self.programs[program].spec.stop_timeout
    }

    /// SIGKILL every group that still has a member, leaders gone or not.
    fn escalate(&mut self) {
        let mut targets: Vec<(i32, String)> = self
            .children
            .values()
            .filter(|c| c.state.leader_alive() && !c.killed)
            .map(|c| (c.pid, c.label.clone()))
            .collect();
        targets.extend(self.lingering.iter().map(|(p, l)| (*p, l.clone())));
        for child in self.children.values_mut() {
            child.kill_at = None;
            child.killed = true;
        }
        self.kill_queue.clear();
        for (pgid, label) in targets {
            self.kill_group(pgid, &label);
        }
        if let Some(sd) = self.shutdown.as_mut() {
            sd.escalated = true;
        }
    }

    fn kill_group(&mut self, pgid: i32, label: &str) {
        if children::signal_group(pgid, SIGKILL) {
            log::info!("{label} pid {pgid} did not stop in time: sent SIGKILL");
            self.events.emit(
                "signal",
                json!({"label": label, "pid": pgid, "signal": "SIGKILL"}),
            );
        }
    }

    fn on_deadlines(&mut self, now: Instant) {
        while let Some(&(t, id)) = self.kill_queue.first() {
            if t > now {
                break;
            }
            self.kill_queue.pop_first();
            let Some(c) = self.children.get_mut(&id) else {
                continue;
            };
            c.kill_at = None;
            c.killed = true;
            let (pgid, label) = (c.pid, c.label.clone());
            self.kill_group(pgid, &label);
        }
        if self
            .shutdown
            .as_ref()
            .is_some_and(|sd| !sd.escalated && sd.kill_at <= now)
        {
            self.escalate();
        }
    }

    fn next_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let readable_work = self.ready.iter().any(|t| {
            let (_, stream) = token_pipe(*t);
            self.sink(stream).has_room()
        });
        let console_work = self
            .console
            .as_ref()
            .is_some_and(|c| c.open && (c.more || !c.pollable));
        if readable_work || console_work {
            return Some(Duration::ZERO);
        }
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let (Mode::Run(r), None) = (&self.mode, &self.shutdown) {
            if let Some(t) = r.next_start() {
                consider(t);
            }
        }
        if let Some(&(t, _)) = self.kill_queue.first() {
            consider(t);
        }
        if let Some(sd) = &self.shutdown {
            if !sd.escalated {
                consider(sd.kill_at);
            }
            if let Some(t) = sd.drain_until {
                consider(t);
            }
            if self.alive == 0 && !self.lingering.is_empty() {
                // Waiting for killed groups to empty: check again soon.
                consider(now + Duration::from_millis(20));
            }
        }
        next.map(|t| t.saturating_duration_since(now))
    }

    fn finished(&mut self) -> bool {
        let Some(sd) = self.shutdown.as_ref() else {
            return false;
        };
        if self.alive > 0 || !self.doomed.is_empty() {
            return false;
        }
        self.lingering.retain(|pgid, _| children::group_alive(*pgid));
        if !self.lingering.is_empty() && !sd.escalated {
            return false;
        }
        let now = Instant::now();
        let open_pipes = self.children.values().any(Child::has_pipes);
        if open_pipes || !self.lingering.is_empty() {
            let drain_until = match self.shutdown.as_mut() {
                Some(sd) => *sd.drain_until.get_or_insert(now + DRAIN_LIMIT),
                None => return false,
            };
            if now < drain_until {
                return false;
            }
            // Whatever still holds a pipe is outside every group brood knows.
            if !self.force_close_pipes() {
                return false;
            }
        }
        (self.stdout.pending() == 0 || self.stdout.closed) && self.stderr.pending() == 0
    }

    /// Give up on output that cannot be written (a reader that stopped
    /// reading): close the sinks and every pipe. Only on a third request.
    fn abandon_output(&mut self) {
        // Only a stream that is stuck: brood's summary still goes to a
        // stderr that is being read.
        for sink in [&mut self.stdout, &mut self.stderr] {
            if sink.pending() > 0 {
                sink.close();
            }
        }
        let ids: Vec<u64> = self.children.keys().copied().collect();
        for id in ids {
            self.close_pipe(id, Stream::Stdout);
            self.close_pipe(id, Stream::Stderr);
        }
        if let Some(sd) = self.shutdown.as_mut() {
            sd.drain_until = Some(Instant::now());
        }
    }

    /// Read what is left in every pipe whose sink has room, then close it.
    /// False when a full sink keeps some open (nothing is dropped).
    fn force_close_pipes(&mut self) -> bool {
        let ids: Vec<u64> = self.children.keys().copied().collect();
        let mut all = true;
        for id in ids {
            for stream in [Stream::Stdout, Stream::Stderr] {
                if !self.sink(stream).has_room() {
                    all = false;
                    continue;
                }
                while self
                    .children
                    .get(&id)
                    .is_some_and(|c| c.pipes[stream as usize].is_some())
                {
                    if !self.read_pipe(id, stream) {
                        self.close_pipe(id, stream);
                    }
                }
            }
        }
        all
    }

    fn on_stdout_closed(&mut self) {
        if self.stdout.closed && self.shutdown.is_some() {
            return;
        }
        self.stdout.close();
        self.begin_shutdown("stdout_closed".to_string());
    }

    // ----- output ----------------------------------------------------------

    fn sink(&self, stream: Stream) -> &Sink {
        match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr if self.shared_streams => &self.stdout,
            Stream::Stderr => &self.stderr,
        }
    }

    /// Read ready pipes within the budget, then write what can be written.
    fn pump(&mut self) {
        let mut budget = READ_BUDGET;
        let mut blocked = Vec::new();
        while budget > 0 {
            let Some(token) = self.ready.pop_front() else {
                break;
            };
            let (id, stream) = token_pipe(token);
            if self
                .children
                .get(&id)
                .is_none_or(|c| c.pipes[stream as usize].is_none())
            {
                continue;
            }
            if !self.sink(stream).has_room() {
                blocked.push(token);
                continue;
            }
            budget -= 1;
            if self.read_pipe(id, stream) {
                self.ready.push_back(token);
            }
        }
        self.ready.extend(blocked);
        self.dedup_ready();
        let queued = logging::take_queued();
        self.err_sink().push_raw(&queued);
        if self
            .console
            .as_ref()
            .is_some_and(|c| c.open && (c.more || !c.pollable))
        {
            self.read_console();
        }
        self.serve_followers();
        if self.stdout.flush().is_err() {
            self.on_stdout_closed();
        }
        if !self.shared_streams {
            let _ = self.stderr.flush();
        }
    }

    fn dedup_ready(&mut self) {
        if self.ready.len() > 1 {
            let mut seen = HashSet::with_capacity(self.ready.len());
            self.ready.retain(|t| seen.insert(*t));
        }
    }

    /// One read from a pipe. True if it may have more; false at EAGAIN or
    /// after EOF (which closes the pipe).
    fn read_pipe(&mut self, id: u64, stream: Stream) -> bool {
        let Some(child) = self.children.get_mut(&id) else {
            return false;
        };
        let Some(pipe) = child.pipes[stream as usize].as_mut() else {
            return false;
        };
        let n = loop {
            let rc = unsafe {
                libc::read(
                    pipe.fd.as_raw_fd(),
                    self.scratch.as_mut_ptr().cast(),
                    self.scratch.len(),
                )
            };
            if rc < 0 {
                match nix::errno::Errno::last() {
                    nix::errno::Errno::EINTR => continue,
                    nix::errno::Errno::EAGAIN => return false,
                    _ => break 0,
                }
            }
            break rc as usize;
        };
        let sink = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr if self.shared_streams => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        // One cached prefix per stream: each is colored only if its own
        // sink is a terminal.
        let cached = &mut child.prefix[stream as usize];
        if cached.1 != self.width || cached.0.is_empty() {
            cached.0 = output::prefix(&child.label, self.width, child.n as usize, sink.color);
            cached.1 = self.width;
        }
        let opts = &self.opts.output;
        let prefix: &[u8] = if opts.prefix {
            &child.prefix[stream as usize].0
        } else {
            b""
        };
        let mut ring = self.control.as_mut().and_then(|c| c.rings.get_mut(child.program));
        let label = &child.label;
        let mut emit = |line: &[u8]| {
            if let Some(r) = ring.as_mut() {
                r.push(label, stream == Stream::Stderr, line);
            }
            if opts.timestamps {
                let mut p = output::timestamp();
                p.extend_from_slice(prefix);
                sink.push_line(&p, line);
            } else {
                sink.push_line(prefix, line);
            }
        };
        if n == 0 {
            pipe.framer.finish(&mut emit);
            self.close_pipe(id, stream);
            return false;
        }
        pipe.framer.feed(&self.scratch[..n], &mut emit);
        true
    }

    fn close_pipe(&mut self, id: u64, stream: Stream) {
        let Some(child) = self.children.get_mut(&id) else {
            return;
        };
        if let Some(pipe) = child.pipes[stream as usize].take() {
            let raw: RawFd = pipe.fd.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
            drop(pipe);
        }
        if !child.has_pipes() && !child.state.leader_alive() {
            self.children.remove(&id);
        }
    }

    /// Where brood's own words and children's stderr go.
    fn err_sink(&mut self) -> &mut Sink {
        if self.shared_streams {
            &mut self.stdout
        } else {
            &mut self.stderr
        }
    }

    fn say(&mut self, text: &str) {
        // Log lines queued so far come first, so the console reads in order.
        let queued = logging::take_queued();
        let sink = self.err_sink();
        sink.push_raw(&queued);
        sink.push_raw(text.as_bytes());
        if !text.ends_with('\n') {
            sink.push_raw(b"\n");
        }
    }

    // ----- console ---------------------------------------------------------

    fn read_console(&mut self) {
        let Some(console) = self.console.as_mut() else {
            return;
        };
        if !console.open {
            return;
        }
        let mut commands = Vec::new();
        let mut buf = [0u8; 4096];
        let mut eof = false;
        console.more = true;
        for _ in 0..16 {
            let rc = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if rc < 0 {
                match nix::errno::Errno::last() {
                    nix::errno::Errno::EINTR => continue,
                    nix::errno::Errno::EAGAIN => {
                        console.more = false;
                        break;
                    }
                    e => {
                        log::warn!("cannot read the console: {e}");
                        eof = true;
                        break;
                    }
                }
            }
            if rc == 0 {
                eof = true;
                break;
            }
            console.reader.feed(&buf[..rc as usize], &mut commands);
            if !console.pollable {
                // A regular file never blocks; one read per turn keeps the
                // loop responsive.
                break;
            }
            let mut pfd = libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            };
            if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 {
                console.more = false;
                break;
            }
        }
        if eof {
            console.reader.finish(&mut commands);
        }
        for command in commands {
            if self.shutdown.is_some() {
                break;
            }
            self.on_command(command);
        }
        if eof {
            if let Some(c) = self.console.as_mut() {
                if c.open && c.pollable {
                    let _ = self.poll.registry().deregister(&mut SourceFd(&0));
                }
                c.open = false;
            }
            self.begin_shutdown("eof".to_string());
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Spawn => {
                if let Mode::Spawn(q) = &mut self.mode {
                    // Start it now, so a `q` later in the same read still finds it.
                    q.queued += 1;
                    self.start_queued();
                }
            }
            Command::List if matches!(self.mode, Mode::Run(_)) => self.list_slots(),
            Command::Kill(target) if matches!(self.mode, Mode::Run(_)) => self.kill_target(&target),
            Command::Restart(target) if matches!(self.mode, Mode::Run(_)) => self.restart_target(&target),
            Command::List => self.list(),
            Command::Help => self.say(console::HELP),
            Command::Quit => self.begin_shutdown("console".to_string()),
            Command::Kill(target) => match self.find_live(&target) {
                Some(id) => {
                    let grace = self.grace_for(self.children[&id].program);
                    let label = self.children[&id].label.clone();
                    self.say(&format!("stopping {label}"));
                    self.stop_child(id, grace);
                }
                None => self.say(&format!("no running child '{target}' (l lists them)")),
            },
            Command::Restart(_) => self.say("r restarts programs in run mode; here, press Enter to spawn"),
            Command::Unknown(text) => self.say(&format!("unknown command '{text}' (h for help)")),
        }
    }

    fn find_live(&self, target: &str) -> Option<u64> {
        let pid: Option<i32> = target.parse().ok();
        self.children
            .values()
            .filter(|c| c.state.leader_alive())
            .find(|c| c.label == target || Some(c.pid) == pid)
            .map(|c| c.id)
    }

    fn list(&mut self) {
        let now = Instant::now();
        let mut rows: Vec<&Child> = self
            .children
            .values()
            .filter(|c| c.state.leader_alive())
            .collect();
        rows.sort_by_key(|c| c.id);
        let w = rows.iter().map(|c| c.label.len()).max().unwrap_or(5).max(5);
        let mut text = format!(
            "{:<w$}  {:>7}  {:<8}  {:>7}  {:>8}  LAST EXIT\n",
            "LABEL", "PID", "STATE", "UPTIME", "RESTARTS"
        );
        for c in &rows {
            text.push_str(&format!(
                "{:<w$}  {:>7}  {:<8}  {:>7}  {:>8}  -\n",
                c.label,
                c.pid,
                c.state.name(),
                children::human_duration(c.uptime(now)),
                0
            ));
        }
        let s = self.stats;
        text.push_str(&format!(
            "{} running; {} spawned, {} succeeded, {} failed, {} spawn_failed, {} stopped\n",
            rows.len(),
            s.spawned,
            s.succeeded,
            s.failed,
            s.spawn_failed,
            s.stopped
        ));
        self.say(&text);
    }

    // ----- the end ---------------------------------------------------------

    fn finish(mut self) -> Outcome {
        let s = self.stats;
        log::info!(
            "summary: spawned {}, succeeded {}, failed {}, spawn_failed {}, stopped {}",
            s.spawned,
            s.succeeded,
            s.failed,
            s.spawn_failed,
            s.stopped
        );
        self.events.emit(
            "summary",
            json!({"spawned": s.spawned, "succeeded": s.succeeded, "failed": s.failed,
                   "spawn_failed": s.spawn_failed, "stopped": s.stopped}),
        );
        self.close_clients();
        let queued = logging::take_queued();
        self.err_sink().push_raw(&queued);
        self.stdout.flush_blocking();
        self.stderr.flush_blocking();
        let code = match &self.mode {
            Mode::Spawn(_) => i32::from(s.failed != 0 || s.spawn_failed != 0),
            Mode::Run(r) => r.exit_code(),
        };
        Outcome { code }
    }
}

/// Width of the widest label a batch will print, so columns never move.
pub fn batch_width(name: &str, start: u64, count: Option<u64>) -> usize {
    let last = start.saturating_add(count.unwrap_or(1).saturating_sub(1));
    name.len() + 1 + last.to_string().len()
}
