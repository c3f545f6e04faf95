//! `brood run` as a service manager (SPEC 13-14): dependency conditions,
//! blocked programs, ordered stop, restart strategies, the supervisor-wide
//! budget, `shutdown_on` and `--exit-with`. Real children, real signals; the
//! children keep their own records (files) of what happened to them.

mod util;

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use util::*;

/// Index of the first event of `kind` for `label` (or name).
fn index_of(events: &[Value], kind: &str, who: &str) -> Option<usize> {
    events
        .iter()
        .position(|e| e["event"] == kind && (e["label"] == who || e["name"] == who))
}

fn spawn_pids(events: &[Value], label: &str) -> Vec<i64> {
    events
        .iter()
        .filter(|e| e["event"] == "spawn" && e["label"] == label)
        .filter_map(|e| e["pid"].as_i64())
        .collect()
}

#[test]
fn a_dependent_starts_only_after_its_one_shot_succeeded() {
    let toml = r#"
[program.migrate]
shell = "sleep 0.3; exit 0"
restart = "never"

[program.web]
shell = "exec sleep 30"
depends_on = { migrate = "succeeded" }
"#;
    let brood = run_in("dep-succeeded", &[("brood.toml", toml)], &[]).start();
    brood.wait_events("web spawned", |e| index_of(e, "spawn", "web.1").is_some());
    let events = brood.events();
    let migrate_exit = index_of(&events, "exit", "migrate.1").expect("migrate exited");
    let web_spawn = index_of(&events, "spawn", "web.1").expect("web spawned");
    assert!(
        migrate_exit < web_spawn,
        "web spawned before migrate ended: {events:?}"
    );
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    assert_eq!(out.code(), Some(0), "{}", out.context());
}

#[test]
fn a_failed_one_shot_blocks_its_dependent_which_never_starts() {
    let toml = r#"
[program.migrate]
shell = "exit 3"
restart = "never"

[program.web]
shell = "exec sleep 30"
depends_on = { migrate = "succeeded" }
"#;
    let out = run_in("dep-blocked", &[("brood.toml", toml)], &[]).run();
    let events = out.events();
    assert!(index_of(&events, "spawn", "web.1").is_none(), "{}", out.context());
    let blocked = events_of(&events, "blocked");
    assert_eq!(blocked.len(), 1, "{}", out.context());
    assert_eq!(blocked[0]["name"], "web");
    let reason = blocked[0]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("migrate"),
        "reason names the dependency: {reason}"
    );
    assert_eq!(
        out.code(),
        Some(1),
        "blocked counts as a failure{}",
        out.context()
    );
}

#[test]
fn ctl_start_retries_a_blocked_program() {
    let dir = TempDir::new("dep-retry");
    let marker = dir.join("fixed");
    let toml = format!(
        r#"
[program.migrate]
shell = "test -e {m}"
restart = "never"

[program.web]
shell = "exec sleep 30"
depends_on = {{ migrate = "succeeded" }}

[program.keep]
shell = "exec sleep 30"
"#,
        m = marker.display()
    );
    let brood = run_in("dep-retry", &[("brood.toml", &toml)], &[]).start();
    brood.wait_events("web blocked", |e| !events_of(e, "blocked").is_empty());
    std::fs::write(&marker, "").unwrap();
    let ctl = |verb: &[&str]| ctl_of(&brood, verb);
    assert!(ctl(&["start", "migrate"]).status.success());
    brood.wait_events("migrate succeeded", |e| {
        e.iter()
            .filter(|x| x["event"] == "exit" && x["label"] == "migrate.1")
            .any(|x| x["code"] == 0)
    });
    assert!(ctl(&["start", "web"]).status.success());
    brood.wait_events("web spawned", |e| index_of(e, "spawn", "web.1").is_some());
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    assert_eq!(out.code(), Some(0), "{}", out.context());
}

/// A program that records when its TERM came and when it exits, in a file
/// of its own, then takes `linger` seconds to stop.
fn recorder(dir: &Path, name: &str, linger: &str) -> String {
    let log = dir.join(format!("{name}.log"));
    format!(
        "trap 'echo term $(date +%s%N) >> {log}; sleep {linger}; echo exit $(date +%s%N) >> {log}; exit 0' TERM; echo up >> {log}; while :; do sleep 0.05; done",
        log = log.display()
    )
}

fn recorded(dir: &Path, name: &str, what: &str) -> u128 {
    let text = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{what} ")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} recorded no {what}: {text:?}"))
}

#[test]
fn shutdown_stops_dependents_first_each_once_and_unrelated_in_parallel() {
    let dir = TempDir::new("ordered-stop-records");
    let toml = format!(
        r#"
[program.db]
shell = "{db}"

[program.web]
shell = "{web}"
depends_on = {{ db = "started" }}

[program.other]
shell = "{other}"
"#,
        db = recorder(dir.path(), "db", "0.1"),
        web = recorder(dir.path(), "web", "0.5"),
        other = recorder(dir.path(), "other", "0.1"),
    );
    let brood = run_in("ordered-stop", &[("brood.toml", &toml)], &[]).start();
    wait_for(Duration::from_secs(10), "all up", || {
        ["db", "web", "other"]
            .iter()
            .all(|n| std::fs::read_to_string(dir.join(format!("{n}.log"))).is_ok_and(|t| t.contains("up")))
    });
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    assert_eq!(out.code(), Some(0), "{}", out.context());
    let web_exit = recorded(dir.path(), "web", "exit");
    let db_term = recorded(dir.path(), "db", "term");
    let other_term = recorded(dir.path(), "other", "term");
    let web_term = recorded(dir.path(), "web", "term");
    assert!(db_term >= web_exit, "db got TERM before web had ended");
    assert!(
        other_term < web_exit,
        "other waited for web, which it does not depend on"
    );
    assert!(
        web_term <= other_term + 300_000_000,
        "web and other stop together"
    );
    for name in ["db", "web", "other"] {
        let text = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap();
        assert_eq!(text.matches("term").count(), 1, "{name} got one TERM: {text}");
    }
    let events = out.events();
    let signals: Vec<&str> = events_of(&events, "signal")
        .iter()
        .filter_map(|e| e["label"].as_str())
        .collect();
    assert_eq!(
        signals.len(),
        3,
        "one stop signal each, all in --events: {signals:?}"
    );
}

#[test]
fn exit_with_names_the_test_program_and_brood_exits_with_its_status() {
    let procfile = "web: sleep 30\ntest: sh -c 'sleep 0.2; exit 3'\n";
    let out = run_in("exit-with", &[("Procfile", procfile)], &["--exit-with", "test"]).run();
    assert_eq!(out.code(), Some(3), "{}", out.context());
    let events = out.events();
    let shutdown = events_of(&events, "shutdown");
    assert_eq!(shutdown[0]["reason"], "exit:test", "{}", out.context());
    // web was stopped, not left behind.
    assert_eq!(events_of(&events, "exit").len(), 2, "{}", out.context());
}

#[test]
fn exit_with_any_ends_on_the_first_exit_like_honcho() {
    let procfile = "a: sleep 30\nb: sh -c 'sleep 0.2; exit 5'\nc: sleep 30\n";
    let out = run_in(
        "exit-with-any",
        &[("Procfile", procfile)],
        &["--exit-with", "any"],
    )
    .run();
    assert_eq!(out.code(), Some(5), "{}", out.context());
    let events = out.events();
    assert_eq!(spawn_pids(&events, "b.1").len(), 1, "b was not restarted");
}

#[test]
fn shutdown_on_exit_reports_a_signal_death_as_128_plus() {
    let toml = r#"
[program.web]
shell = "exec sleep 30"

[program.test]
shell = "kill -KILL $$"
restart = "never"
shutdown_on = "exit"
"#;
    let out = run_in("shutdown-on-signal", &[("brood.toml", toml)], &[]).run();
    assert_eq!(out.code(), Some(137), "{}", out.context());
}

#[test]
fn shutdown_on_failure_leaves_a_success_alone() {
    let toml = r#"
[program.web]
shell = "exec sleep 30"

[program.job]
shell = "exit 0"
restart = "never"
shutdown_on = "failure"
"#;
    let brood = run_in("shutdown-on-failure", &[("brood.toml", toml)], &[]).start();
    brood.wait_events("job ended", |e| index_of(e, "exit", "job.1").is_some());
    assert!(
        holds_for(Duration::from_millis(300), || events_of(
            &brood.events(),
            "shutdown"
        )
        .is_empty()),
        "a successful job ended the run"
    );
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    assert_eq!(out.code(), Some(0), "{}", out.context());
}

#[test]
fn a_cycle_is_a_config_error_naming_it() {
    let toml = r#"
[program.web]
command = ["sleep", "1"]
depends_on = { cache = "started" }

[program.cache]
command = ["sleep", "1"]
depends_on = { web = "ready" }
"#;
    let out = run_in("cycle", &[("brood.toml", toml)], &[]).run();
    assert_eq!(out.code(), Some(2), "{}", out.context());
    out.assert_stderr_contains("depends_on cycle: web -> cache -> web");
    assert!(out.events().is_empty(), "nothing started");
}

/// A program that fails on its first run only (a marker file remembers).
fn fails_once(dir: &Path, name: &str) -> String {
    let m = dir.join(format!("{name}.ran"));
    format!(
        "if [ -e {m} ]; then exec sleep 30; else touch {m}; sleep 0.3; exit 1; fi",
        m = m.display()
    )
}

#[test]
fn one_for_all_restarts_every_program_when_one_fails() {
    let dir = TempDir::new("one-for-all-marks");
    let toml = format!(
        r#"
[supervisor]
strategy = "one_for_all"

[program.a]
shell = "exec sleep 30"
backoff = {{ initial = "50ms" }}

[program.b]
shell = "{b}"
backoff = {{ initial = "50ms" }}
"#,
        b = fails_once(dir.path(), "b")
    );
    let brood = run_in("one-for-all", &[("brood.toml", &toml)], &[]).start();
    brood.wait_events("a restarted", |e| {
        spawn_pids(e, "a.1").len() == 2 && spawn_pids(e, "b.1").len() == 2
    });
    let events = brood.events();
    let strategy = events_of(&events, "strategy");
    assert_eq!(strategy.len(), 1, "{events:?}");
    assert_eq!(strategy[0]["kind"], "one_for_all");
    assert_eq!(strategy[0]["trigger"], "b.1");
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    assert_eq!(out.code(), Some(0), "{}", out.context());
}

#[test]
fn rest_for_one_restarts_the_later_programs_only() {
    let dir = TempDir::new("rest-for-one-marks");
    let toml = format!(
        r#"
[supervisor]
strategy = "rest_for_one"

[program.a]
shell = "exec sleep 30"

[program.b]
shell = "{b}"
backoff = {{ initial = "50ms" }}

[program.c]
shell = "exec sleep 30"
"#,
        b = fails_once(dir.path(), "b")
    );
    let brood = run_in("rest-for-one", &[("brood.toml", &toml)], &[]).start();
    brood.wait_events("c restarted", |e| {
        spawn_pids(e, "c.1").len() == 2 && spawn_pids(e, "b.1").len() == 2
    });
    let events = brood.events();
    assert_eq!(
        spawn_pids(&events, "a.1").len(),
        1,
        "a's pid must not change: {events:?}"
    );
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    assert_eq!(out.code(), Some(0), "{}", out.context());
}

#[test]
fn the_supervisor_budget_escalates_and_brood_exits_1() {
    let toml = r#"
[supervisor]
max_restarts = 2
restart_window = "60s"

[program.crash]
shell = "exit 1"
backoff = { initial = "10ms", max = "20ms" }

[program.web]
shell = "exec sleep 30"
"#;
    let out = run_in("escalate", &[("brood.toml", toml)], &[]).run();
    assert_eq!(out.code(), Some(1), "{}", out.context());
    let events = out.events();
    assert_eq!(events_of(&events, "escalate").len(), 1, "{}", out.context());
    assert_eq!(events_of(&events, "shutdown")[0]["reason"], "escalate");
}

#[test]
fn the_ci_example_runs_in_order_and_exits_with_the_tests_status() {
    let brood = Brood::new("ci-example");
    let src = script_dir().join("examples/ci");
    for f in ["brood.toml", "db", "migrate", "web", "test"] {
        let to = brood.dir().join(f);
        std::fs::copy(src.join(f), &to).expect("copy the example");
    }
    let out = brood.raw_args(["run", "--exit-with", "test"]).run();
    assert_eq!(out.code(), Some(0), "{}", out.context());
    let stdout = out.stdout_str();
    assert!(stdout.contains("2 passed, 0 failed"), "{}", out.context());
    let stderr = out.stderr_str();
    let at = |needle: &str| {
        stderr
            .find(needle)
            .unwrap_or_else(|| panic!("no '{needle}' in {stderr}"))
    };
    assert!(at("db.1 is ready") < at("spawned migrate.1"));
    assert!(at("migrate.1 pid") < at("spawned web.1"));
    assert!(at("web.1 is ready") < at("spawned test.1"));
    // Reverse order at the end: web (which needs db through migrate) first.
    let last = |needle: &str| stderr.rfind(needle).unwrap_or(0);
    assert!(last("web.1 pid") < last("db.1 pid"), "{stderr}");
}
