//! `brood ctl reload` (SPEC 16): unchanged programs keep their pids, changed
//! ones restart, new ones start, removed ones stop and are forgotten, a
//! numprocs-only change is a scale; an invalid config changes nothing.

mod util;

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use util::*;

/// label -> pid of the live instances, from `ctl status --json`.
fn pids(brood: &Running) -> std::collections::BTreeMap<String, i64> {
    // Before brood listens, ctl answers nothing: no pids yet.
    let out = ctl_of(brood, &["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["label"].as_str()?.to_string(), p["pid"].as_i64()?)))
        .collect()
}

// `gone` last: a program's place in the file sets its PORT, so removing one
// before others would change their PORT, and restart them (rightly).
const BEFORE: &str = r#"
[program.same]
command = ["sleep", "30"]

[program.changed]
command = ["sleep", "30"]

[program.more]
command = ["sleep", "30"]

[program.gone]
command = ["sleep", "30"]
"#;

const AFTER: &str = r#"
[program.same]
command = ["sleep", "30"]

[program.changed]
command = ["sleep", "31"]

[program.more]
command = ["sleep", "30"]
numprocs = 2

[program.new]
command = ["sleep", "30"]
"#;

#[test]
fn reload_keeps_unchanged_pids_and_applies_each_fate() {
    let brood = Brood::new("reload");
    std::fs::write(brood.dir().join("brood.toml"), BEFORE).unwrap();
    let events = brood.events_path();
    let brood = brood
        .raw_args(["run".into(), "--events".into(), events.into_os_string()])
        .start();
    wait_for(Duration::from_secs(10), "all four up", || pids(&brood).len() == 4);
    let before = pids(&brood);
    std::fs::write(brood.dir().join("brood.toml"), AFTER).unwrap();
    let out = ctl_of(&brood, &["reload"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "same unchanged",
        "changed restarted",
        "gone stopped",
        "more scaled",
        "new started",
    ] {
        assert!(text.contains(line), "reply lacks '{line}': {text}");
    }
    wait_for(Duration::from_secs(10), "the new set up", || {
        let now = pids(&brood);
        now.len() == 5 && now.get("changed.1") != before.get("changed.1")
    });
    let after = pids(&brood);
    assert_eq!(after["same.1"], before["same.1"], "unchanged keeps its pid");
    assert_eq!(after["more.1"], before["more.1"], "a scale keeps the first pid");
    assert!(after.contains_key("more.2") && after.contains_key("new.1"));
    assert!(!after.contains_key("gone.1"), "removed is forgotten");
    assert!(process_dead(before["gone.1"] as i32) || proc_state(before["gone.1"] as i32) == Some('Z'));
    let reload = events_of(&brood.events(), "reload")
        .first()
        .map(|e| (*e).clone())
        .expect("a reload event");
    assert_eq!(reload["programs"]["changed"], "restarted");
    assert_eq!(reload["programs"]["gone"], "stopped");
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    assert_eq!(out.code(), Some(0), "{}", out.context());
}

#[test]
fn an_invalid_reload_is_refused_and_changes_nothing() {
    let brood = Brood::new("reload-bad");
    std::fs::write(brood.dir().join("brood.toml"), BEFORE).unwrap();
    let brood = brood.raw_args(["run"]).start();
    wait_for(Duration::from_secs(10), "all four up", || pids(&brood).len() == 4);
    let before = pids(&brood);
    std::fs::write(brood.dir().join("brood.toml"), "[program.x]\ncommand = 3\n").unwrap();
    let out = ctl_of(&brood, &["reload"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("brood.toml:2:"), "the error is located: {err}");
    assert!(holds_for(Duration::from_millis(300), || pids(&brood) == before));
    brood.signal(Signal::SIGTERM);
    brood.finish();
}
