//! Shutdown: on end of input, signals and a closed stdout; the stop signal
//! to each group, SIGKILL after the grace, draining the last words, and
//! what happens to the children when brood itself is killed.

mod util;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use util::*;

fn exit_of<'a>(events: &'a [Value], label: &str) -> Option<&'a Value> {
    events_of(events, "exit")
        .into_iter()
        .find(|e| e["label"] == label)
}

#[test]
fn eof_shuts_down_live_children_with_sigterm() {
    let mut brood = Brood::new("eof")
        .opts(["-i"])
        .stdin_pipe()
        .prog("/bin/sleep")
        .args(["1000"])
        .start();
    for _ in 0..3 {
        brood.send("\n");
    }
    brood.wait_spawned(3);
    brood.close_stdin();
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let shutdown = out.events_of("shutdown");
    assert_eq!(shutdown.len(), 1, "{}", out.context());
    assert_eq!(shutdown[0]["reason"], "eof", "{}", out.context());
    let exits = out.events_of("exit");
    assert_eq!(exits.len(), 3, "{}", out.context());
    for e in &exits {
        assert_eq!(e["signal"], "SIGTERM", "{}", out.context());
        assert!(e["code"].is_null(), "{}", out.context());
    }
    let signals = out.events_of("signal");
    assert_eq!(
        signals.iter().filter(|s| s["signal"] == "SIGTERM").count(),
        3,
        "{}",
        out.context()
    );
    out.assert_stderr_contains("stopped 3");
}

#[test]
fn shutdown_without_children_is_prompt() {
    let out = Brood::new("eof-empty").opts(["-i"]).script("hello").run();
    out.assert_code(0);
    assert!(out.elapsed < Duration::from_secs(5), "{}", out.context());
    out.assert_stderr_contains("brood: summary: spawned 0, succeeded 0, failed 0, spawn_failed 0, stopped 0");
}

#[test]
fn sigterm_drains_children_last_words() {
    let brood = Brood::new("last-words")
        .opts(["-n", "3"])
        .script("lastwords")
        .start();
    brood.wait_stdout("3 ready", |s| s.matches("| ready").count() == 3);
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let stdout = out.stdout_str();
    for n in 1..=3 {
        let found = stdout
            .lines()
            .any(|l| split_prefixed(l) == Some((&format!("lastwords.{n}"), &format!("last words {n}"))));
        assert!(found, "no last words from lastwords.{n}{}", out.context());
    }
    assert_eq!(
        out.events_of("shutdown")[0]["reason"],
        "signal:SIGTERM",
        "{}",
        out.context()
    );
    assert_eq!(
        out.events().last().unwrap()["event"],
        "summary",
        "{}",
        out.context()
    );
}

/// Starts `-n 2 -- sleep 1000`, sends `sig` to brood, checks the reason.
fn assert_signal_shuts_down(name: &str, sig: Signal, reason: &str) {
    let brood = Brood::new(name)
        .opts(["-n", "2"])
        .prog("/bin/sleep")
        .args(["1000"])
        .start();
    brood.wait_spawned(2);
    brood.signal(sig);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        out.events_of("shutdown")[0]["reason"],
        reason,
        "{}",
        out.context()
    );
    assert_eq!(out.events_of("exit").len(), 2, "{}", out.context());
}

#[test]
fn sigint_shuts_down_gracefully() {
    assert_signal_shuts_down("sigint", Signal::SIGINT, "signal:SIGINT");
}

#[test]
fn sighup_shuts_down_gracefully() {
    assert_signal_shuts_down("sighup", Signal::SIGHUP, "signal:SIGHUP");
}

#[test]
fn stubborn_child_is_killed_after_grace() {
    let brood = Brood::new("grace")
        .opts(["-n", "1", "--grace", "500ms"])
        .script("stubborn")
        .start();
    brood.wait_stdout("stubborn ready", |s| s.contains("| stubborn ready"));
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let events = out.events();
    let exit = exit_of(&events, "stubborn.1").unwrap_or_else(|| panic!("no exit{}", out.context()));
    assert_eq!(exit["signal"], "SIGKILL", "{}", out.context());
    let signals = events_of(&events, "signal");
    let term = signals
        .iter()
        .find(|s| s["signal"] == "SIGTERM")
        .expect("SIGTERM sent");
    let kill = signals
        .iter()
        .find(|s| s["signal"] == "SIGKILL")
        .expect("SIGKILL sent");
    let waited = kill["ts"].as_f64().unwrap() - term["ts"].as_f64().unwrap();
    assert!(
        (0.45..4.0).contains(&waited),
        "SIGKILL {waited:.3}s after SIGTERM, grace is 500ms{}",
        out.context()
    );
    out.assert_stderr_contains("killed by signal SIGKILL");
}

#[test]
fn stop_signal_reaches_the_child_before_the_kill() {
    // A roomy grace, so that a loaded machine still runs the child's trap
    // before the SIGKILL; the previous test covers the timing.
    let brood = Brood::new("grace-term")
        .opts(["-n", "1", "--grace", "2s"])
        .script("stubborn")
        .start();
    brood.wait_stdout("stubborn ready", |s| s.contains("| stubborn ready"));
    brood.signal(Signal::SIGTERM);
    brood.wait_stderr("the child ignoring TERM", |s| {
        s.contains("stubborn.1 | ignoring TERM")
    });
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let events = out.events();
    assert_eq!(
        exit_of(&events, "stubborn.1").unwrap()["signal"],
        "SIGKILL",
        "{}",
        out.context()
    );
}

#[test]
fn second_sigint_skips_the_grace() {
    let brood = Brood::new("double-int")
        .opts(["-n", "1", "--grace", "60s"])
        .script("stubborn")
        .start();
    brood.wait_stdout("stubborn ready", |s| s.contains("| stubborn ready"));
    brood.signal(Signal::SIGINT);
    brood.wait_events("SIGTERM sent", |ev| {
        events_of(ev, "signal").iter().any(|s| s["signal"] == "SIGTERM")
    });
    let second = Instant::now();
    brood.signal(Signal::SIGINT);
    let out = brood.finish();
    assert!(
        second.elapsed() < Duration::from_secs(10),
        "second SIGINT did not escalate{}",
        out.context()
    );
    out.assert_no_panic();
    let events = out.events();
    assert_eq!(
        exit_of(&events, "stubborn.1").unwrap()["signal"],
        "SIGKILL",
        "{}",
        out.context()
    );
}

#[test]
fn grandchildren_die_with_their_group() {
    let brood = Brood::new("forker").opts(["-n", "1"]).script("forker").start();
    brood.wait_stdout("two grandchildren", |s| s.matches("| grandchild ").count() == 2);
    let grandchildren: Vec<i32> = brood
        .stdout_str()
        .lines()
        .filter_map(|l| split_prefixed(l)?.1.strip_prefix("grandchild ")?.parse().ok())
        .collect();
    assert_eq!(grandchildren.len(), 2);
    for &gc in &grandchildren {
        assert!(
            !process_dead(gc),
            "grandchild {gc} should be alive before shutdown"
        );
    }
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let gone = try_wait_for(Duration::from_secs(5), || {
        grandchildren.iter().all(|&gc| process_dead(gc))
    });
    let states: Vec<_> = grandchildren.iter().map(|&gc| (gc, proc_state(gc))).collect();
    if !gone {
        // Do not leave them behind.
        for &gc in &grandchildren {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(gc), Signal::SIGKILL);
        }
    }
    assert!(gone, "grandchildren outlived brood: {states:?}{}", out.context());
}

#[test]
fn closed_stdout_shuts_down_cleanly() {
    // 100000 lines (~1 MB) per child do not fit in the pipes: the children
    // are still writing when brood notices its stdout is gone, so the
    // shutdown reason is certainly `stdout_closed`, not `done`.
    let brood = Brood::new("closed-stdout")
        .opts(["-n", "50"])
        .close_stdout_after(1)
        .script("counter")
        .args(["100000"])
        .start();
    let out = brood.finish();
    out.assert_no_panic();
    assert!(out.code().is_some(), "brood died of a signal{}", out.context());
    // Clean (no panic, every child reaped), but the batch was cut short:
    // a run that did not do all it was asked must not report success.
    assert_eq!(
        out.code(),
        Some(1),
        "a batch cut short by a closed stdout exits 1{}",
        out.context()
    );
    assert!(out.elapsed < Duration::from_secs(10), "{}", out.context());
    let events = out.events();
    assert_eq!(
        events_of(&events, "shutdown")[0]["reason"],
        "stdout_closed",
        "{}",
        out.context()
    );
    // Every child brood started was reaped.
    let spawned = events_of(&events, "spawn").len();
    assert_eq!(events_of(&events, "exit").len(), spawned, "{}", out.context());
    assert_eq!(events.last().unwrap()["event"], "summary", "{}", out.context());
}

#[test]
fn pipe_into_head_exits_cleanly_and_reports_the_batch_cut_short() {
    let out = Brood::new("head")
        .shell(r#""$BROOD" spawn -n 50 --events "$EVENTS" -- "$SCRIPTS/counter" 1000 | head -1; echo "brood-status=${PIPESTATUS[0]}" >&2"#)
        .run();
    out.assert_no_panic();
    let lines = out.stdout_lines();
    assert_eq!(lines.len(), 1, "{}", out.context());
    let (label, rest) = split_prefixed(&lines[0]).expect("prefixed");
    assert!(label.starts_with("counter."), "{}", out.context());
    assert_eq!(rest, "line 1", "{}", out.context());
    out.assert_stderr_contains("brood-status=1");
    assert!(out.elapsed < Duration::from_secs(10), "{}", out.context());
}

#[test]
fn pdeathsig_takes_children_when_brood_is_killed() {
    let brood = Brood::new("pdeathsig")
        .opts(["-n", "2"])
        .prog("/bin/sleep")
        .args(["1000"])
        .start();
    let pids = brood.wait_spawned(2);
    brood.signal(Signal::SIGKILL);
    let gone = try_wait_for(Duration::from_secs(5), || pids.iter().all(|&p| process_dead(p)));
    assert!(
        gone,
        "children survived a SIGKILLed brood: {:?}",
        pids.iter().map(|&p| proc_state(p)).collect::<Vec<_>>()
    );
    let out = brood.finish();
    assert_eq!(out.code(), None, "brood was SIGKILLed");
}

#[test]
fn no_pdeathsig_leaves_children_running() {
    let brood = Brood::new("no-pdeathsig")
        .opts(["-n", "1", "--no-pdeathsig"])
        .prog("/bin/sleep")
        .args(["1000"])
        .start();
    let pids = brood.wait_spawned(1);
    brood.signal(Signal::SIGKILL);
    let died = try_wait_for(Duration::from_millis(500), || process_dead(pids[0]));
    assert!(!died, "child died with brood despite --no-pdeathsig");
    // The guard kills the orphan (it has no exit event) when `out` is made.
    let _ = brood.finish();
    wait_for(Duration::from_secs(5), "the orphan to be cleaned up", || {
        process_dead(pids[0])
    });
}

#[test]
fn shutdown_stops_spawning() {
    let brood = Brood::new("stop-spawning")
        .opts(["-n", "10", "-j", "2"])
        .prog("/bin/sleep")
        .args(["1000"])
        .start();
    brood.wait_spawned(2);
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        out.events_of("spawn").len(),
        2,
        "no spawns after shutdown began{}",
        out.context()
    );
    let summary = out.events_of("summary");
    assert_eq!(summary[0]["spawned"].as_i64(), Some(2), "{}", out.context());
}
