//! The event loop: one thread, one `epoll`, everything brood does.
//!
//! It owns the signal self-pipe, stdin (the console), every child's output
//! pipes, brood's own stdout/stderr writers and the control socket. It only
//! translates: readiness, signals and expired timers become inputs (to the
//! run core in `crate::core`, or to the spawn queue), and the actions that
//! come back become syscalls. Its timeout is the nearest deadline in one
//! timer queue, so an idle brood sleeps in `epoll_wait` and uses no CPU.
//! Shutdown is a state entered once; only the top of [`Supervisor::run`]
//! ends the loop.
//!
//! - `process`: the process table: spawning, reaping, stopping, killing.
//! - `pipes`: children's output, brood's own words, the two sinks.
//! - `console`: commands typed on stdin.
//! - `run`: `brood run`: executing the run core's actions, user requests.
//! - `control`: the control socket's clients.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events as MioEvents, Interest, Poll, Token};
use signal_hook::consts::signal::*;

use crate::children::Child;
use crate::config::OutputOptions;
use crate::console::LineReader;
use crate::core::event::{Event, ShutdownReason};
use crate::core::ids::{ChildId, Counter, ProgramId};
use crate::core::run::RunCore;
use crate::core::timers::{Timer, Timers};
use crate::error::Error;
use crate::events::Events;
use crate::logfile::LogFiles;
use crate::logging;
use crate::output::{self, Sink};
use crate::signals;
use crate::spawn::SpawnContext;

mod console;
mod control;
mod pipes;
mod probes;
mod process;
mod run;

pub use control::ControlServer;
pub use process::{InstanceEnv, Program};

const SIGNALS: Token = Token(0);
const STDIN: Token = Token(1);
const STDOUT: Token = Token(2);
const STDERR: Token = Token(3);
const EVENTS: Token = Token(5);

/// After the last leader is gone, how long pipes held open by processes
/// outside every group brood knows may keep brood waiting.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// How often to look again whether killed groups have emptied, once every
/// leader is gone (the only timed wake, and a rare one: brood is the
/// subreaper, so their members come back to it to be reaped).
const RECHECK: Duration = Duration::from_millis(20);

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
    /// The counter reached u64::MAX and that child was spawned: no counter
    /// is left for another (it never wraps).
    pub counter_spent: bool,
}

/// What decides when children start and what their exits mean.
pub enum Driver {
    /// `brood spawn`: a queue of spawn requests with a counter.
    Spawn(SpawnQueue),
    /// `brood run`: instances of programs, kept up by the run core.
    Run(Box<RunCore>),
}

#[derive(Default, Debug, Clone, Copy)]
pub struct Stats {
    pub spawned: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub spawn_failed: u64,
    pub stopped: u64,
}

/// brood's children outside every group it knows, found at shutdown.
#[derive(Default)]
struct Leftovers {
    /// Signalled and not yet reaped.
    pids: HashSet<i32>,
    /// Their grace is over: any found later gets SIGKILL at once.
    killed: bool,
    /// Said once that they cannot be found without /proc.
    warned: bool,
}

struct Shutdown {
    /// SIGKILL was sent to every group left.
    escalated: bool,
    /// The shutdown grace's timer is set.
    grace_armed: bool,
    /// When brood stops waiting for pipes held by strangers.
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
    /// The children's parent-death signal (`--pdeathsig`), or none.
    pub pdeathsig: Option<libc::c_int>,
}

pub struct Outcome {
    pub code: i32,
}

pub struct Supervisor {
    poll: Poll,
    signals: signals::SignalQueue,
    ctx: SpawnContext,
    programs: HashMap<ProgramId, Program>,
    opts: Options,
    driver: Driver,
    /// Boxed: the table then holds a pointer per child, so growing it
    /// with thousands of children moves and doubles pointers, not whole
    /// children (measured: 9,000 children, peak RSS 16.9 -> 13.4 MiB).
    children: HashMap<ChildId, Box<Child>>,
    by_pid: HashMap<i32, ChildId>,
    child_ids: Counter,
    alive: usize,
    /// Children whose exec failed: reaped silently.
    doomed: HashSet<i32>,
    /// Groups whose leader is reaped but that still had members: pgid to label.
    lingering: HashMap<i32, String>,
    leftovers: Leftovers,
    /// Pipes with data to read, in the order they became ready.
    ready: VecDeque<Token>,
    timers: Timers,
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
    /// Writing brood's stdout failed (not a reader that went away).
    output_error: Option<String>,
    /// A batch was stopped by its reader going away before it was done.
    cut_short: bool,
    /// Run mode: how to plan the run again (`ctl reload`).
    reload: Option<run::ReloadState>,
    /// Readiness and health checks under way, and the sd_notify socket.
    probes: probes::Probes,
    /// When the loop started: the origin of the probes' shared time grid.
    epoch: Instant,
    /// The instances' log files (`log = {...}`).
    logs: LogFiles,
}

impl Supervisor {
    pub fn new(
        programs: Vec<(ProgramId, Program)>,
        opts: Options,
        driver: Driver,
        events: Events,
        width_hint: usize,
        mut control: Option<ControlServer>,
    ) -> Result<Supervisor, Error> {
        let poll = Poll::new().map_err(|e| Error::io("cannot create epoll", e))?;
        let strays = signals::catch_strays().map_err(|e| Error::io("cannot install signal handlers", e))?;
        let signals = signals::SignalQueue::new(signals::SUPERVISOR_SIGNALS)
            .map_err(|e| Error::io("cannot open a signalfd", e))?;
        poll.registry()
            .register(&mut SourceFd(&signals.raw_fd()), SIGNALS, Interest::READABLE)
            .map_err(|e| Error::io("cannot watch signals", e))?;
        process::become_subreaper();
        if let Some(ctl) = control.as_mut() {
            poll.registry()
                .register(&mut ctl.bound.listener, control::LISTENER, Interest::READABLE)
                .map_err(|e| Error::io("cannot watch the control socket", e))?;
        }
        let reset = signals::non_default_dispositions(&strays);
        let ctx =
            SpawnContext::new(reset, opts.pdeathsig).map_err(|e| Error::io("cannot open /dev/null", e))?;

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
        if let Some(fd) = events.stream_fd() {
            // A FIFO reader that was slow: flush what waits once it reads.
            let _ = poll
                .registry()
                .register(&mut SourceFd(&fd), EVENTS, Interest::WRITABLE);
        }
        let console = opts.console.then(|| ConsoleIn {
            reader: LineReader::default(),
            pollable: poll
                .registry()
                .register(&mut SourceFd(&0), STDIN, Interest::READABLE)
                .is_ok(),
            open: true,
            more: false,
        });
        Ok(Supervisor {
            poll,
            signals,
            ctx,
            programs: programs.into_iter().collect(),
            opts,
            driver,
            children: HashMap::new(),
            by_pid: HashMap::new(),
            child_ids: Counter::default(),
            alive: 0,
            doomed: HashSet::new(),
            lingering: HashMap::new(),
            leftovers: Leftovers::default(),
            ready: VecDeque::new(),
            timers: Timers::default(),
            stdout,
            stderr,
            shared_streams,
            width: width_hint,
            events,
            console,
            shutdown: None,
            stats: Stats::default(),
            scratch: vec![0u8; pipes::DEFAULT_PIPE],
            control,
            output_error: None,
            cut_short: false,
            reload: None,
            probes: probes::Probes::default(),
            epoch: Instant::now(),
            logs: LogFiles::default(),
        })
    }

    /// Instances of these programs also write their lines to files.
    pub fn with_log_files(mut self, logs: LogFiles) -> Supervisor {
        self.logs = logs;
        self
    }

    /// Run until shutdown is complete. Returns the exit code.
    pub fn run(mut self) -> Outcome {
        let mut events = MioEvents::with_capacity(1024);
        self.begin();
        loop {
            self.start_queued();
            self.check_done();
            self.pump();
            if self.finished() {
                break;
            }
            // With output waiting, look for more work first and write it
            // out only when there is none (see pipes::flush_output).
            let flush_first = self.output_waiting();
            let timeout = if flush_first {
                Some(Duration::ZERO)
            } else {
                self.next_timeout()
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("epoll failed: {e}");
                    self.begin_shutdown(ShutdownReason::Error);
                }
                continue;
            }
            if flush_first && events.is_empty() {
                self.flush_output();
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
                    EVENTS => self.events.flush(),
                    control::LISTENER => self.accept_clients(),
                    probes::NOTIFY => self.on_notify(),
                    token if token.0 >= probes::FIRST_PROBE => self.on_probe_event(token),
                    token if token.0 >= control::FIRST_CLIENT => self.on_client(token),
                    token => {
                        // Only a terminal's master is watched for writing.
                        if event.is_writable() {
                            self.on_terminal_writable(token);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            // Hung up with nothing in it (epoll reports the
                            // pipe's state as it is now): no read needed.
                            let hung_up = event.is_read_closed() && !event.is_readable() && !event.is_error();
                            self.ready
                                .push_back(if hung_up { pipes::hung_up(token) } else { token });
                        }
                    }
                }
            }
            self.on_timers(Instant::now());
        }
        self.finish()
    }

    /// The first turn: run mode starts every instance.
    fn begin(&mut self) {
        if let Driver::Run(core) = &mut self.driver {
            let mut actions = Vec::new();
            core.start_all(Instant::now(), &mut actions);
            self.execute(actions);
        }
    }

    /// `-n`: the batch is done when nothing is queued and nothing is left.
    /// `run`: done when every instance is down for good.
    fn check_done(&mut self) {
        if self.shutdown.is_some() || self.alive > 0 || !self.doomed.is_empty() {
            return;
        }
        let done = match &self.driver {
            Driver::Spawn(q) => q.batch && q.queued == 0,
            Driver::Run(core) => core.all_settled(),
        };
        if done {
            self.begin_shutdown(ShutdownReason::Done);
        }
    }

    // ----- signals ---------------------------------------------------------

    fn on_signals(&mut self) {
        let pending = self.signals.pending();
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
                        self.begin_shutdown(ShutdownReason::Signal(sig));
                    }
                }
                _ => {}
            }
        }
    }

    // ----- shutdown --------------------------------------------------------

    fn begin_shutdown(&mut self, reason: ShutdownReason) {
        if self.shutdown.is_some() {
            return;
        }
        log::info!("shutting down ({reason})");
        let requested = reason.requested();
        self.events.emit(&Event::Shutdown { reason });
        self.shutdown = Some(Shutdown {
            escalated: false,
            grace_armed: false,
            drain_until: None,
        });
        let now = Instant::now();
        match &mut self.driver {
            Driver::Spawn(q) => q.queued = 0,
            Driver::Run(core) => {
                let mut actions = Vec::new();
                core.shutdown(requested, now, &mut actions);
                self.execute(actions);
            }
        }
        // Children no instance owns (spawn mode's) stop at once; run mode's
        // stop when the core says, dependents first.
        let ids: Vec<ChildId> = self
            .children
            .values()
            .filter(|c| c.instance.is_none())
            .map(|c| c.id)
            .collect();
        for id in ids {
            if let Some(grace) = self.children.get(&id).map(|c| self.grace_for(c.program)) {
                self.stop_child(id, grace);
            }
        }
        self.stop_lingering();
        self.arm_shutdown_grace(now);
        if let Some(c) = self.console.as_mut() {
            if c.open && c.pollable {
                let _ = self.poll.registry().deregister(&mut SourceFd(&0));
            }
            c.open = false;
        }
    }

    /// stdout failed. A reader that went away (EPIPE) is a clean reason to
    /// stop; anything else (a full disk, EIO, a file size limit) loses
    /// output, so it is named and fails the run.
    fn on_stdout_error(&mut self, err: io::Error) {
        if err.kind() == io::ErrorKind::BrokenPipe {
            self.on_stdout_closed();
            return;
        }
        if self.output_error.is_none() {
            log::error!("cannot write to stdout: {err}; stopping");
            self.output_error = Some(err.to_string());
        }
        self.stdout.close();
        self.begin_shutdown(ShutdownReason::OutputError);
    }

    /// Once every stop signal is out, SIGKILL what is left after the
    /// longest grace. In run mode a program waiting for its dependents to
    /// end has not had its stop signal yet: the clock starts when it has.
    pub(super) fn arm_shutdown_grace(&mut self, now: Instant) {
        if self
            .shutdown
            .as_ref()
            .is_none_or(|sd| sd.escalated || sd.grace_armed)
        {
            return;
        }
        if let Driver::Run(core) = &self.driver {
            if core.stops_pending() {
                return;
            }
        }
        let longest = self
            .programs
            .values()
            .map(|p| p.spec.stop_timeout)
            .max()
            .unwrap_or_default()
            .max(self.opts.grace);
        self.timers.schedule(Timer::ShutdownGrace, now + longest);
        if let Some(sd) = self.shutdown.as_mut() {
            sd.grace_armed = true;
        }
    }

    fn on_stdout_closed(&mut self) {
        if self.stdout.closed && self.shutdown.is_some() {
            return;
        }
        self.stdout.close();
        // A batch that had more to do was cut short: not a success.
        if let Driver::Spawn(q) = &self.driver {
            if q.batch && (q.queued > 0 || self.alive > 0) {
                self.cut_short = true;
            }
        }
        self.begin_shutdown(ShutdownReason::StdoutClosed);
    }

    // ----- time ------------------------------------------------------------

    fn on_timers(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Kill(id) => self.kill_child(id),
                Timer::KillGroup(pgid) => self.kill_lingering(pgid),
                Timer::Backoff(instance) => self.on_backoff_over(instance, now),
                Timer::ReadyDeadline(instance) => self.on_ready_deadline(instance),
                Timer::ProbeAttempt(instance) => self.on_probe_attempt(instance),
                Timer::ProbeTimeout(instance) => self.on_probe_timeout(instance),
                Timer::Watchdog(instance) => self.on_watchdog(instance),
                Timer::ShutdownGrace => {
                    if self.shutdown.as_ref().is_some_and(|sd| !sd.escalated) {
                        self.escalate();
                    }
                }
                Timer::ClientIdle(client) => self.on_client_idle(client),
                Timer::KillLeftovers => self.kill_leftovers(),
                // Looked at by `finished`, every turn.
                Timer::Drain | Timer::Recheck => {}
            }
        }
    }

    fn next_timeout(&self) -> Option<Duration> {
        let readable_work = self
            .ready
            .iter()
            .any(|t| self.sink(pipes::token_stream(*t)).has_room());
        let console_work = self
            .console
            .as_ref()
            .is_some_and(|c| c.open && (c.more || !c.pollable));
        if readable_work || console_work || self.spawn_due() || self.probes.notify_more {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        self.timers.next().map(|t| t.saturating_duration_since(now))
    }

    /// Shutdown is complete: every child reaped, every group empty (or
    /// killed), every pipe drained (or given up on), every byte written.
    fn finished(&mut self) -> bool {
        let Some(sd) = self.shutdown.as_ref() else {
            return false;
        };
        if self.alive > 0 || !self.doomed.is_empty() {
            return false;
        }
        let escalated = sd.escalated;
        self.lingering.retain(|pgid, _| process::group_has_member(*pgid));
        if !self.lingering.is_empty() {
            if !self.timers.is_set(Timer::Recheck) {
                self.timers.schedule(Timer::Recheck, Instant::now() + RECHECK);
            }
            if !escalated {
                return false;
            }
        }
        // Leftovers are what is left once every known group is empty (a
        // member of a killed group may still be dying, not yet a zombie).
        if self.lingering.is_empty() && !self.stop_leftovers() {
            return false;
        }
        let now = Instant::now();
        let open_pipes = self.children.values().any(|c| c.has_pipes());
        if open_pipes || !self.lingering.is_empty() {
            let drain_until = match self.shutdown.as_mut() {
                Some(sd) => *sd.drain_until.get_or_insert(now + DRAIN_LIMIT),
                None => return false,
            };
            if now < drain_until {
                self.timers.schedule(Timer::Drain, drain_until);
                return false;
            }
            // Whatever still holds a pipe is outside every group brood knows.
            if !self.force_close_pipes() {
                return false;
            }
        }
        (self.stdout.pending() == 0 || self.stdout.closed) && self.stderr.pending() == 0
    }

    // ----- the end ---------------------------------------------------------

    fn finish(mut self) -> Outcome {
        // Before the summary, which is always the last event.
        let dropped = self.logs.finish(Instant::now());
        self.report_dropped(dropped);
        let s = self.stats;
        log::info!(
            "summary: spawned {}, succeeded {}, failed {}, spawn_failed {}, stopped {}",
            s.spawned,
            s.succeeded,
            s.failed,
            s.spawn_failed,
            s.stopped
        );
        self.events.emit(&Event::Summary {
            spawned: s.spawned,
            succeeded: s.succeeded,
            failed: s.failed,
            spawn_failed: s.spawn_failed,
            stopped: s.stopped,
        });
        self.close_clients();
        let events_whole = self.events.finish();
        let queued = logging::take_queued();
        self.err_sink().push_raw(&queued);
        self.stdout.flush_blocking();
        self.stderr.flush_blocking();
        let code = match &self.driver {
            Driver::Spawn(_) => i32::from(s.failed != 0 || s.spawn_failed != 0 || self.cut_short),
            Driver::Run(core) => core.exit_code(),
        };
        // Output or events that could not be written are a failure too.
        let lost = self.output_error.is_some() || !events_whole;
        Outcome {
            code: if lost { code.max(1) } else { code },
        }
    }
}

/// Width of the widest label a batch will print, so columns never move.
pub fn batch_width(name: &str, start: u64, count: Option<u64>) -> usize {
    let last = start.saturating_add(count.unwrap_or(1).saturating_sub(1));
    name.len() + 1 + last.to_string().len()
}
