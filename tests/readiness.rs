//! Readiness and health in `brood run` (SPEC 13), end to end: every kind of
//! readiness check with real clients (systemd-notify, python's http.server),
//! the ready timeout, unhealthy restarts, the sd_notify watchdog, and a probe
//! that hangs not delaying anything else. Loopback addresses only.

mod util;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use util::*;

fn ready_by(events: &[Value], label: &str) -> Option<String> {
    events
        .iter()
        .find(|e| e["event"] == "ready" && e["label"] == label)
        .and_then(|e| e["by"].as_str().map(str::to_string))
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn every_kind_of_readiness_check_gates_its_dependent() {
    let port = free_port();
    let toml = format!(
        r#"
[program.web]
shell = "sleep 0.3; exec python3 -m http.server {port} --bind 127.0.0.1"
ready = {{ http = "http://127.0.0.1:{port}/", timeout = "20s", interval = "100ms" }}

[program.tcp]
shell = "sleep 0.2; exec python3 -c 'import socket,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"127.0.0.1\", {tport})); s.listen(); time.sleep(60)'"
ready = {{ tcp = "127.0.0.1:{tport}", timeout = "20s", interval = "100ms" }}

[program.logged]
shell = "sleep 0.2; echo server listening; exec sleep 60"
ready = {{ log = "listening$" }}

[program.notified]
shell = "sleep 0.2; systemd-notify --ready --status='warming done'; exec sleep 60"
ready = {{ notify = true, timeout = "10s" }}

[program.fdready]
shell = "sleep 0.2; echo >&3; exec sleep 60"
ready = {{ fd = 3 }}

[program.execready]
shell = "sleep 0.3; touch ready.flag; exec sleep 60"
ready = {{ exec = ["test", "-e", "ready.flag"], interval = "100ms" }}

[program.app]
shell = "echo app up; exec sleep 60"
depends_on = {{ web = "ready", tcp = "ready", logged = "ready", notified = "ready", fdready = "ready", execready = "ready" }}
"#,
        tport = free_port()
    );
    let brood = start_toml("ready-kinds", &toml);
    brood.wait_events("app spawned", |e| {
        e.iter().any(|x| x["event"] == "spawn" && x["label"] == "app.1")
    });
    let events = brood.events();
    for (label, by) in [
        ("web.1", "http"),
        ("tcp.1", "tcp"),
        ("logged.1", "log"),
        ("notified.1", "notify"),
        ("fdready.1", "fd"),
        ("execready.1", "exec"),
    ] {
        assert_eq!(
            ready_by(&events, label).as_deref(),
            Some(by),
            "{label}: {events:?}"
        );
    }
    let app = events
        .iter()
        .position(|e| e["event"] == "spawn" && e["label"] == "app.1")
        .unwrap();
    let last_ready = events.iter().rposition(|e| e["event"] == "ready").unwrap();
    assert!(last_ready < app, "app started before every dependency was ready");
    // STATUS= shows in ctl status.
    let out = Command::new(brood_bin())
        .args(["ctl", "--socket"])
        .arg(brood.dir().join(".brood.sock"))
        .args(["status", "--json"])
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let notified = status["programs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == "notified.1")
        .unwrap();
    assert_eq!(notified["notify_status"], "warming done");
    assert_eq!(notified["ready"], true);
    assert_eq!(notified["state"], "running");
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    assert_eq!(out.code(), Some(0), "{}", out.context());
}

#[test]
fn not_ready_in_time_is_stopped_and_counts_as_a_failed_start() {
    let port = free_port();
    let toml = format!(
        r#"
[program.slow]
shell = "exec sleep 60"
ready = {{ tcp = "127.0.0.1:{port}", timeout = "400ms", interval = "50ms" }}
restart = "on-failure"
backoff = {{ initial = "50ms" }}
max_restarts = 1
"#
    );
    let brood = start_toml("ready-timeout", &toml);
    brood.wait_events("fatal", |e| !events_of(e, "fatal").is_empty());
    let out = brood.finish();
    let events = out.events();
    let timeouts = events_of(&events, "ready_timeout");
    assert_eq!(timeouts.len(), 2, "two runs, each timed out: {}", out.context());
    assert!(timeouts[0]["reason"].as_str().unwrap_or("").contains("not ready"));
    assert_eq!(events_of(&events, "restart").len(), 1, "{}", out.context());
    assert_eq!(out.code(), Some(1), "fatal{}", out.context());
}

#[test]
fn failing_health_checks_make_it_unhealthy_and_restart_it() {
    let toml = r#"
[program.svc]
shell = "touch healthy; sleep 0.6; rm healthy; exec sleep 60"
ready = { exec = ["test", "-e", "healthy"], interval = "50ms" }
health = { exec = ["test", "-e", "healthy"], interval = "100ms", failures = 2 }
restart = "on-failure"
backoff = { initial = "50ms" }
"#;
    let brood = start_toml("unhealthy", toml);
    brood.wait_events("restarted after unhealthy", |e| {
        !events_of(e, "unhealthy").is_empty() && e.iter().filter(|x| x["event"] == "spawn").count() >= 2
    });
    let events = brood.events();
    let unhealthy = events_of(&events, "unhealthy");
    assert!(
        unhealthy[0]["reason"].as_str().unwrap_or("").contains("2 failed"),
        "{unhealthy:?}"
    );
    brood.signal(Signal::SIGTERM);
    brood.finish();
}

#[test]
fn a_missed_watchdog_ping_restarts_the_instance() {
    let toml = r#"
[program.dog]
shell = "systemd-notify --ready; exec sleep 60"
ready = { notify = true, watchdog = "300ms" }
restart = "on-failure"
backoff = { initial = "50ms" }
"#;
    let brood = start_toml("watchdog", toml);
    brood.wait_events("unhealthy", |e| !events_of(e, "unhealthy").is_empty());
    let events = brood.events();
    let reason = events_of(&events, "unhealthy")[0]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(reason.contains("WATCHDOG"), "{reason}");
    brood.signal(Signal::SIGTERM);
    brood.finish();
}

#[test]
fn a_probe_that_hangs_does_not_delay_other_output() {
    // A listener that never accepts and never answers: the HTTP check hangs
    // until its deadline.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let toml = format!(
        r#"
[program.stuck]
shell = "exec sleep 60"
ready = {{ http = "http://127.0.0.1:{port}/", timeout = "30s", interval = "5s" }}

[program.ticker]
shell = "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick $i; sleep 0.05; done; exec sleep 60"
"#
    );
    let brood = start_toml("hung-probe", &toml);
    let t0 = Instant::now();
    brood.wait_stdout("ten ticks", |out| out.contains("tick 10"));
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "ticks were held up: {took:?}");
    brood.signal(Signal::SIGTERM);
    brood.finish();
    drop(silent);
}

#[test]
fn health_checks_run_for_a_program_without_a_readiness_check() {
    let toml = r#"
[program.svc]
shell = "exec sleep 60"
health = { exec = ["false"], interval = "50ms", failures = 2 }
restart = "on-failure"
backoff = { initial = "50ms" }
"#;
    let brood = start_toml("health-no-ready", toml);
    brood.wait_events("unhealthy", |e| !events_of(e, "unhealthy").is_empty());
    brood.signal(Signal::SIGTERM);
    brood.finish();
}
