//! Validated readiness and health settings (SPEC 13): `ready = {...}` and
//! `health = {...}` of a `[program.NAME]`. The TOML reader builds them;
//! `crate::probe` holds the pieces that run them.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use crate::core::instance::ReadyBy;
use crate::probe::{HttpTarget, LineMatcher};

pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_READY_INTERVAL: Duration = Duration::from_millis(250);
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTH_FAILURES: u32 = 3;
/// The shortest probe interval: shorter would keep brood busy probing.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// The fd numbers `ready = { fd = N }` may name: not stdio, and below
/// the 1024 that select()-based programs can handle.
pub const READY_FD_RANGE: std::ops::RangeInclusive<i32> = 3..=1023;

/// A check that brood runs itself: tcp, http or a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeSpec {
    /// A TCP connect succeeds.
    Tcp(SocketAddr),
    /// An HTTP GET answers 2xx or 3xx.
    Http(HttpTarget),
    /// The command (program and arguments) exits 0.
    Exec(Vec<OsString>),
}

impl ProbeSpec {
    /// Its kind, in the run core's words (`word()` is the config key).
    pub fn by(&self) -> ReadyBy {
        match self {
            ProbeSpec::Tcp(_) => ReadyBy::Tcp,
            ProbeSpec::Http(_) => ReadyBy::Http,
            ProbeSpec::Exec(_) => ReadyBy::Exec,
        }
    }
}

/// How an instance says it is ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadyKind {
    /// sd_notify `READY=1`; with a watchdog, `WATCHDOG=1` at least this
    /// often once ready.
    Notify {
        watchdog: Option<Duration>,
    },
    /// s6's notification-fd: a newline on this fd.
    Fd(i32),
    /// A line of its output matches.
    Log(LineMatcher),
    Probe(ProbeSpec),
}

impl ReadyKind {
    /// The `by` of the `ready` event it gives (`word()` is the config key).
    pub fn by(&self) -> ReadyBy {
        match self {
            ReadyKind::Notify { .. } => ReadyBy::Notify,
            ReadyKind::Fd(_) => ReadyBy::Fd,
            ReadyKind::Log(_) => ReadyBy::Log,
            ReadyKind::Probe(p) => p.by(),
        }
    }
}

/// `ready = { KIND = ..., timeout = DUR, interval = DUR }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadySpec {
    pub kind: ReadyKind,
    /// Not ready this long after the spawn: stopped, a failed start.
    pub timeout: Duration,
    /// Between two attempts of a probe (tcp, http, exec).
    pub interval: Duration,
}

/// `health = { KIND = ..., interval = DUR, timeout = DUR, failures = N }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSpec {
    pub probe: ProbeSpec,
    /// From the end of one attempt to the start of the next.
    pub interval: Duration,
    /// One attempt's limit.
    pub timeout: Duration,
    /// Failed attempts in a row that make the instance unhealthy.
    pub failures: u32,
}
