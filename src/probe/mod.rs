//! Readiness and health probes (SPEC 13): the pieces the event loop drives.
//!
//! Nothing here blocks, sleeps, spawns a thread or reads a clock. Each
//! piece is a mio source (or owns one) that the loop registers under a
//! token of its choosing; the loop feeds it the events for that token and
//! gets results back as values. Deadlines (`timeout`, `interval`) stay in
//! the loop's timer queue, as `Instant`s.
//!
//! # How the loop uses each piece
//!
//! The config gives `RunProgram::ready: Option<ReadySpec>` and
//! `RunProgram::health: Option<HealthSpec>` (`crate::config`), validated at
//! load: addresses are IP literals (no name lookups anywhere), the log
//! pattern is compiled, `fd` is 3..=1023.
//!
//! **Readiness clock.** A program with `ready` has `Policy::ready_check`
//! set (`p.ready.is_some()`). When one of its instances is spawned, push
//! `ready_deadline = spawned_at + ready.timeout` into the timer queue. The
//! first pass before it: mark the instance ready (`ready.kind.by()` is the
//! core's `ReadyBy`), cancel the deadline and tear the probe down. At the
//! deadline: tear it down, stop the instance and count a failed start
//! (event `ready_timeout`). When the instance exits first, tear it down.
//!
//! **`notify` ([`notify`]).** One socket per run, made the first time a
//! program has `notify`: `let dir = runtime_dir()?; let (sock, path) =
//! NotifySocket::bind(&dir)?;` register it `READABLE` under one token; give
//! every notify program `NOTIFY_SOCKET=path` in its env (the same for all
//! its instances, so it fits the per-program `Image`), and with `watchdog`
//! also `WATCHDOG_USEC=<µs>`. On a readable event call
//! `sock.recv_all(|n| ...)`: for each [`notify::Notification`], find the
//! instance by `pgid_of(n.pid)` (instances lead their own group, so the
//! group id is the instance's pid); none: ignore it (log at debug). Then
//! `n.ready` marks it ready, `n.status` is its `STATUS=` text, `n.watchdog`
//! re-arms its watchdog deadline (`now + watchdog`; a missed one counts as
//! a health failure), `n.stopping` may be shown. Handle the notification
//! inside the closure: dropping it releases a `systemd-notify` that waits
//! on a barrier, after which the sender exits and its pid can no longer
//! be placed. If `recv_all` returns `Drained::Budget`, call it again on the
//! next turn (poll with a zero timeout) before sleeping.
//!
//! **`fd = N` ([`fd`]).** Before the spawn: `let (pipe, extra) =
//! fd::ready_pipe(n)?;` spawn with `spawn::spawn_with(ctx, image, argv,
//! stdio, Some(extra))` (brood's copy of the write end is closed inside),
//! then register `pipe` `READABLE` under the instance's probe token. On
//! each event call `pipe.on_readable()`: `Some(Pass)` = ready, `Some(Fail)`
//! = it closed the fd (or wrote garbage) without becoming ready (log the
//! reason; the ready deadline still decides); deregister and drop the pipe
//! either way, as s6-supervise does (the program writes one newline, then
//! closes its end).
//!
//! **`log = "REGEX"` ([`log`]).** No source: while the instance is not yet
//! ready, give every complete line of its stdout and stderr (as framed for
//! output) to `matcher.is_match(line)`; the first `true` marks it ready.
//!
//! **`tcp` / `http` ([`net`]), readiness and health.** One attempt is a
//! [`net::Check`]: `Check::start(&target, registry, token)` (an `Err` is a
//! failed attempt already), then on every event for `token`
//! `check.on_event()` until it returns `Some(outcome)`; then drop it (or
//! `check.cancel(registry)`). The attempt's deadline is the loop's: for
//! health `now + health.timeout`; for readiness `min(ready_deadline, now +
//! max(interval, 1s))`, so a connect that hangs (a full backlog, a host
//! that drops packets) is retried. At an attempt's deadline call
//! `check.cancel(registry)`; it failed with `no answer within T
//! (check.stage())`. Readiness: after a failed attempt, start the next at
//! `now + ready.interval` while the ready deadline has not passed. Health,
//! once the instance is ready: an attempt every `health.interval` (counted
//! from the end of the previous one, so attempts never overlap); a pass
//! resets the count, `health.failures` failures in a row make the instance
//! unhealthy (event `unhealthy` with the last reason): stop it and count a
//! failure under its restart policy.
//!
//! **`exec = [ARGV]`.** Not here: the loop runs it through the spawn core
//! like an instance (`Image::new` once per program, with the program's env
//! and cwd; argv from `ProbeSpec::Exec`; its own process group),
//! its exit status 0 is a pass, and at the attempt's deadline its group is
//! killed; the reaper reports its exit, which must not be mistaken for an
//! instance's.
//!
//! Tokens: one for the notify socket; one per instance for its current
//! probe (an fd pipe, a `Check`, at most one at a time per instance) is
//! enough, since readiness ends before health begins.

pub mod fd;
pub mod log;
pub mod net;
pub mod notify;

pub use log::LineMatcher;
pub use net::{Check, HttpTarget, Outcome, Target};
pub use notify::{pgid_of, Notification, NotifySocket};
