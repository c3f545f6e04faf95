//! The one vocabulary of things that happen: written to `--events` (and
//! later streamed to ctl clients), each a JSON object `{"ts", "event", ...}`.
//! Event names and fields are SPEC section 4; a new kind is a new variant.

use std::fmt;

use serde::{Serialize, Serializer};

use super::graph::Strategy;
use super::instance::ReadyBy;
use super::run::Fate;
use crate::reaper::ExitStatus;
use crate::signals;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Spawn {
        label: String,
        name: String,
        n: u64,
        pid: i32,
    },
    SpawnFailed {
        label: String,
        name: String,
        n: u64,
        stage: &'static str,
        errno: i32,
        error: String,
    },
    Exit {
        label: String,
        pid: i32,
        code: Option<i32>,
        signal: Option<String>,
        core: bool,
        runtime_ms: u64,
    },
    /// brood sent a signal to a child's group (or to the child itself).
    Signal {
        label: String,
        pid: i32,
        signal: String,
    },
    Restart {
        label: String,
        delay_ms: u64,
        attempt: u32,
    },
    Fatal {
        label: String,
        reason: String,
    },
    Shutdown {
        reason: ShutdownReason,
    },
    /// An instance passed its readiness check.
    Ready {
        label: String,
        pid: i32,
        by: ReadyBy,
        after_ms: u64,
    },
    /// An instance was not ready in time; it is stopped as a failed start.
    ReadyTimeout {
        label: String,
        pid: i32,
        reason: String,
    },
    /// An instance failed its health checks; it is stopped and restarted.
    Unhealthy {
        label: String,
        pid: i32,
        reason: String,
    },
    /// A program will not start: a dependency's condition can no longer hold.
    Blocked {
        name: String,
        reason: String,
    },
    /// A failure restarts more than the failed instance.
    Strategy {
        kind: Strategy,
        trigger: String,
        restarting: Vec<String>,
    },
    /// The supervisor-wide restart budget is spent: brood shuts down.
    Escalate {
        kind: Strategy,
        reason: String,
    },
    /// `brood ctl reload`: each program's fate.
    Reload {
        programs: std::collections::BTreeMap<String, Fate>,
    },
    /// A log file dropped `lines` lines while it could not be written
    /// (reported when writing works again, or at the end).
    LogDropped {
        label: String,
        file: String,
        lines: u64,
    },
    Summary {
        spawned: u64,
        succeeded: u64,
        failed: u64,
        spawn_failed: u64,
        stopped: u64,
    },
}

impl Event {
    pub fn exit(label: &str, pid: i32, status: ExitStatus, runtime_ms: u64) -> Event {
        let (code, signal, core) = match status {
            ExitStatus::Code(c) => (Some(c), None, false),
            ExitStatus::Signal { signal, core } => (None, Some(signals::name(signal)), core),
        };
        Event::Exit {
            label: label.to_string(),
            pid,
            code,
            signal,
            core,
            runtime_ms,
        }
    }

    pub fn signal(label: &str, pid: i32, sig: i32) -> Event {
        Event::Signal {
            label: label.to_string(),
            pid,
            signal: signals::name(sig),
        }
    }
}

/// Why brood is shutting down. Shown and written as text
/// (`signal:SIGTERM`), compared as a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// A program whose end ends the run (`shutdown_on`, `--exit-with`)
    /// ended: `exit:NAME`.
    ProgramEnded(String),
    /// The supervisor-wide restart budget is spent.
    Escalate,
    /// `q` at the console.
    Console,
    /// End of the console's input.
    Eof,
    Signal(i32),
    /// Nobody reads brood's stdout any more.
    StdoutClosed,
    /// `brood ctl shutdown`.
    Ctl,
    /// Everything ended on its own: the batch is done, or every instance is
    /// down for good.
    Done,
    /// brood's own loop failed.
    Error,
    /// brood's stdout cannot be written (a full disk, EIO).
    OutputError,
}

impl ShutdownReason {
    /// Asked for by someone (not brood finding there is nothing left to do).
    pub fn requested(&self) -> bool {
        *self != ShutdownReason::Done
    }
}

impl fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShutdownReason::ProgramEnded(name) => write!(f, "exit:{name}"),
            ShutdownReason::Escalate => f.write_str("escalate"),
            ShutdownReason::Console => f.write_str("console"),
            ShutdownReason::Eof => f.write_str("eof"),
            ShutdownReason::Signal(s) => write!(f, "signal:{}", signals::name(*s)),
            ShutdownReason::StdoutClosed => f.write_str("stdout_closed"),
            ShutdownReason::Ctl => f.write_str("ctl"),
            ShutdownReason::Done => f.write_str("done"),
            ShutdownReason::Error => f.write_str("error"),
            ShutdownReason::OutputError => f.write_str("stdout_error"),
        }
    }
}

impl Serialize for ShutdownReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_their_spec_names() {
        let e = Event::exit(
            "web.1",
            42,
            ExitStatus::Signal {
                signal: 9,
                core: false,
            },
            7,
        );
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "exit");
        assert_eq!(v["signal"], "SIGKILL");
        assert_eq!(v["code"], serde_json::Value::Null);
        assert_eq!(v["runtime_ms"], 7);
        let v = serde_json::to_value(Event::Shutdown {
            reason: ShutdownReason::Signal(libc::SIGTERM),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": "shutdown", "reason": "signal:SIGTERM"})
        );
        let v = serde_json::to_value(Event::SpawnFailed {
            label: "x.1".into(),
            name: "x".into(),
            n: 1,
            stage: "exec",
            errno: 2,
            error: "e".into(),
        })
        .unwrap();
        assert_eq!(v["event"], "spawn_failed");
        let v = serde_json::to_value(Event::LogDropped {
            label: "web.1".into(),
            file: "/srv/log/web.1.log".into(),
            lines: 3,
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event": "log_dropped", "label": "web.1", "file": "/srv/log/web.1.log", "lines": 3})
        );
    }
}
