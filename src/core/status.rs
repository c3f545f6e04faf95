//! The snapshot of every instance, rendered one way for the console's `l`,
//! `brood ctl status` and its `--json`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::reaper::ExitStatus;

/// One row: what `l` and `ctl status` show of an instance or a child.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub label: String,
    pub name: String,
    pub pid: Option<i32>,
    pub state: String,
    pub uptime_ms: Option<u64>,
    pub restarts: u32,
    pub last_exit: Option<LastExit>,
    /// Passed its readiness check; null for a program without one.
    #[serde(default)]
    pub ready: Option<bool>,
    /// While health checks fail: how many in a row, and the last reason.
    #[serde(default)]
    pub health: Option<String>,
    /// The last `STATUS=` sent over sd_notify.
    #[serde(default)]
    pub notify_status: Option<String>,
    /// Why it is blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How the last run ended: a code, or the signal that killed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    pub code: Option<i32>,
    pub signal: Option<String>,
}

impl LastExit {
    pub fn of(status: ExitStatus) -> LastExit {
        match status {
            ExitStatus::Code(c) => LastExit {
                code: Some(c),
                signal: None,
            },
            ExitStatus::Signal { signal, .. } => LastExit {
                code: None,
                signal: Some(crate::signals::name(signal)),
            },
        }
    }

    fn describe(&self) -> String {
        match (self.code, &self.signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => "-".to_string(),
        }
    }
}

/// `4.2s`, `3m05s`, `2h07m`: short enough for a table.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// The table: a header, then a row per instance.
pub fn render_table(rows: &[InstanceStatus]) -> String {
    let w = rows.iter().map(|r| r.label.len()).max().unwrap_or(5).max(5);
    let mut text = format!(
        "{:<w$}  {:>7}  {:<8}  {:>9}  {:>8}  LAST EXIT\n",
        "LABEL", "PID", "STATE", "UPTIME", "RESTARTS"
    );
    for r in rows {
        let pid = r.pid.map_or("-".to_string(), |p| p.to_string());
        let uptime = r
            .uptime_ms
            .map_or("-".to_string(), |ms| human_duration(Duration::from_millis(ms)));
        let last = match (&r.reason, &r.last_exit) {
            (Some(reason), _) => reason.clone(),
            (None, Some(e)) => e.describe(),
            (None, None) => "-".to_string(),
        };
        text.push_str(&format!(
            "{:<w$}  {:>7}  {:<8}  {:>9}  {:>8}  {}\n",
            r.label, pid, r.state, uptime, r.restarts, last
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_millis(4200)), "4.2s");
        assert_eq!(human_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(human_duration(Duration::from_secs(7620)), "2h07m");
    }

    #[test]
    fn the_table_has_a_row_per_instance_and_round_trips_as_json() {
        let rows = vec![
            InstanceStatus {
                label: "web.1".into(),
                name: "web".into(),
                pid: Some(42),
                state: "running".into(),
                uptime_ms: Some(1500),
                restarts: 2,
                last_exit: Some(LastExit::of(ExitStatus::Code(3))),
                ready: None,
                health: None,
                notify_status: None,
                reason: None,
            },
            InstanceStatus {
                label: "worker.10".into(),
                name: "worker".into(),
                pid: None,
                state: "fatal".into(),
                uptime_ms: None,
                restarts: 0,
                last_exit: Some(LastExit::of(ExitStatus::Signal {
                    signal: 9,
                    core: false,
                })),
                ready: None,
                health: None,
                notify_status: None,
                reason: None,
            },
        ];
        let text = render_table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("LABEL"));
        assert!(lines[1].contains("exited with code 3") && lines[1].contains("1.5s"));
        assert!(lines[2].contains("killed by signal SIGKILL") && lines[2].contains("fatal"));
        let json = serde_json::to_string(&rows).unwrap();
        let back: Vec<InstanceStatus> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rows);
    }
}
