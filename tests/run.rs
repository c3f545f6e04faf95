//! `brood run`: Procfile and brood.toml configs, `.env` and `-e` files,
//! instances, restart policies (backoff, fatal, never, always), stop signals
//! and the SIGKILL escalation, config errors, the console (`r`, `k`, `l`,
//! `q`), shutdown of many instances, program selection by name, and the
//! worked examples in `child-scripts/examples/`.
//!
//! Every test runs brood in its own temp dir (the config is written there and
//! brood's cwd is that dir), in its own process group, under the harness's
//! watchdog and cleanup guard (see `tests/util/mod.rs`).

mod util;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use util::*;

// ---------------------------------------------------------------------------
// Helpers

/// A TOML basic string for a path (the paths used here are plain ASCII).
fn toml_str(p: &Path) -> String {
    format!("{:?}", p.to_str().expect("UTF-8 path"))
}

fn script_toml(name: &str) -> String {
    toml_str(&script(name))
}

/// Events of `kind` for one label.
fn events_for<'a>(events: &'a [Value], kind: &str, label: &str) -> Vec<&'a Value> {
    events_of(events, kind)
        .into_iter()
        .filter(|e| e["label"] == label)
        .collect()
}

fn pids_of(events: &[&Value]) -> Vec<i32> {
    events
        .iter()
        .map(|e| e["pid"].as_i64().expect("pid") as i32)
        .collect()
}

/// Checks the shape every finished run must have: a summary as the last
/// event, exactly one shutdown with `reason`.
#[track_caller]
fn assert_ended(out: &Output, reason: &str) {
    let events = out.events();
    assert_eq!(
        events.last().map(|e| e["event"].clone()),
        Some(Value::from("summary")),
        "the summary must be the last event{}",
        out.context()
    );
    let shutdown = out.events_of("shutdown");
    assert_eq!(shutdown.len(), 1, "exactly one shutdown event{}", out.context());
    assert_eq!(shutdown[0]["reason"], reason, "{}", out.context());
}

/// The `(label, text)` of every prefixed stdout line.
fn prefixed_lines(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(split_prefixed)
        .map(|(l, t)| (l.to_owned(), t.to_owned()))
        .collect()
}

fn has_line(stdout: &str, label: &str, text: &str) -> bool {
    prefixed_lines(stdout)
        .iter()
        .any(|(l, t)| l == label && t.contains(text))
}

/// The rows of the last `l` table in `text`: `(label, pid, state)`.
fn list_rows(text: &str) -> Vec<(String, String, String)> {
    let start = text.rfind("LABEL").expect("an `l` table header");
    text[start..]
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .take_while(|cols| cols.len() >= 5 && cols[0].contains('.'))
        .map(|cols| (cols[0].to_owned(), cols[1].to_owned(), cols[2].to_owned()))
        .collect()
}

/// Sends `l` and returns the table rows it printed.
fn list(brood: &mut Running, expect_rows: usize) -> Vec<(String, String, String)> {
    let mark = brood.stderr_str().len();
    brood.send("l\n");
    brood.wait_stderr("an `l` table", |s| {
        s.get(mark..)
            .is_some_and(|t| t.contains("LABEL") && list_rows(t).len() >= expect_rows)
    });
    list_rows(&brood.stderr_str()[mark..])
}

/// Waits (under the watchdog's limit) for brood to exit, while its temp dir
/// still exists, so that marker files in it can be checked before `finish`.
fn wait_exited(brood: &mut Running) {
    wait_for(WATCHDOG, "brood to exit", || !brood.is_running());
}

fn alive(pid: i32) -> bool {
    !process_dead(pid)
}

// ---------------------------------------------------------------------------
// Procfile, .env, -e

#[test]
fn procfile_runs_both_programs_and_dotenv_reaches_them() {
    let out = run_in(
        "procfile",
        &[
            (
                "Procfile",
                "# two programs\nweb: echo \"web sees $GREETING\"\n\nworker: echo one; echo two\n",
            ),
            (".env", "# a comment\nGREETING=hi there\n"),
        ],
        &[],
    )
    .run();
    out.assert_code(0).assert_no_panic();
    let stdout = out.stdout_str();
    assert!(
        has_line(&stdout, "web.1", "web sees hi there"),
        "{}",
        out.context()
    );
    assert!(has_line(&stdout, "worker.1", "one"), "{}", out.context());
    assert!(has_line(&stdout, "worker.1", "two"), "{}", out.context());
    let labels: BTreeSet<String> = out
        .events_of("spawn")
        .iter()
        .map(|e| e["label"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        labels,
        BTreeSet::from(["web.1".to_owned(), "worker.1".to_owned()])
    );
    assert_ended(&out, "done");
}

#[test]
fn env_file_option_replaces_dotenv() {
    // foreman and honcho: `-e FILE` is read instead of `.env`, not as well.
    let out = run_in(
        "envfile",
        &[
            ("Procfile", "web: echo \"a=$FROM_DOTENV b=$FROM_E\"\n"),
            (".env", "FROM_DOTENV=dotenv\n"),
            ("extra.env", "FROM_E=option\n"),
        ],
        &["-e", "extra.env"],
    )
    .run();
    out.assert_code(0).assert_no_panic();
    assert!(
        has_line(&out.stdout_str(), "web.1", "a= b=option"),
        "{}",
        out.context()
    );
}

// ---------------------------------------------------------------------------
// Instances

#[test]
fn numprocs_gives_numbered_labels() {
    let out = run_in(
        "numprocs",
        &[("brood.toml", "[program.web]\nshell = \"echo hi\"\nnumprocs = 3\n")],
        &[],
    )
    .run();
    out.assert_code(0).assert_no_panic();
    let spawns = out.events_of("spawn");
    let got: Vec<(String, i64, String)> = spawns
        .iter()
        .map(|e| {
            (
                e["label"].as_str().unwrap().to_owned(),
                e["n"].as_i64().unwrap(),
                e["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        got,
        vec![
            ("web.1".to_owned(), 1, "web".to_owned()),
            ("web.2".to_owned(), 2, "web".to_owned()),
            ("web.3".to_owned(), 3, "web".to_owned()),
        ],
        "{}",
        out.context()
    );
    let stdout = out.stdout_str();
    let labels: BTreeSet<String> = prefixed_lines(&stdout).into_iter().map(|(l, _)| l).collect();
    assert_eq!(
        labels,
        BTreeSet::from(["web.1".to_owned(), "web.2".to_owned(), "web.3".to_owned()]),
        "{}",
        out.context()
    );
    for (label, text) in prefixed_lines(&stdout) {
        assert_eq!(text, "hi", "line of {label}{}", out.context());
    }
}

// ---------------------------------------------------------------------------
// Restart policies

#[test]
fn on_failure_backs_off_then_goes_fatal_after_max_restarts() {
    let config = format!(
        "[program.flaky]\ncommand = [{}, \"3\"]\nrestart = \"on-failure\"\n\
         backoff = {{ initial = \"50ms\", max = \"5s\" }}\nmax_restarts = 3\n",
        script_toml("crash")
    );
    let out = run_in("onfailure", &[("brood.toml", &config)], &[]).run();
    out.assert_code(1).assert_no_panic();
    let events = out.events();
    let spawns = events_for(&events, "spawn", "flaky.1");
    assert_eq!(spawns.len(), 4, "3 restarts = 4 runs{}", out.context());
    let exits = events_for(&events, "exit", "flaky.1");
    assert_eq!(exits.len(), 4, "{}", out.context());
    assert!(exits.iter().all(|e| e["code"] == 3), "{}", out.context());
    let restarts = events_for(&events, "restart", "flaky.1");
    let attempts: Vec<i64> = restarts.iter().map(|e| e["attempt"].as_i64().unwrap()).collect();
    assert_eq!(attempts, vec![1, 2, 3], "{}", out.context());
    let delays: Vec<i64> = restarts.iter().map(|e| e["delay_ms"].as_i64().unwrap()).collect();
    // 50, 100, 200 ms, each within +-10% jitter.
    assert!(
        delays.windows(2).all(|w| w[0] < w[1]),
        "delays must grow: {delays:?}{}",
        out.context()
    );
    for (delay, base) in delays.iter().zip([50.0, 100.0, 200.0]) {
        let d = *delay as f64;
        assert!(
            d >= base * 0.9 - 1.0 && d <= base * 1.1 + 1.0,
            "delay {d} is not {base} ms +-10%{}",
            out.context()
        );
    }
    let fatal = events_for(&events, "fatal", "flaky.1");
    assert_eq!(fatal.len(), 1, "{}", out.context());
    // fatal comes after the fourth exit, and nothing is spawned after it.
    let pos = |v: &Value| events.iter().position(|e| std::ptr::eq(e, v)).unwrap();
    assert!(pos(fatal[0]) > pos(exits[3]), "{}", out.context());
    assert!(pos(fatal[0]) > pos(spawns[3]), "{}", out.context());
    out.assert_stderr_contains("flaky.1 is fatal");
    assert_ended(&out, "done");
}

#[test]
fn restart_never_leaves_a_failed_program_down() {
    let config = format!(
        "[program.once]\ncommand = [{}, \"3\"]\nrestart = \"never\"\n\
         backoff = {{ initial = \"10ms\", max = \"10ms\" }}\n",
        script_toml("crash")
    );
    let out = run_in("never", &[("brood.toml", &config)], &[]).run();
    // Done on its own with a failed last exit: status 1.
    out.assert_code(1).assert_no_panic();
    assert_eq!(out.events_of("spawn").len(), 1, "{}", out.context());
    assert_eq!(out.events_of("restart").len(), 0, "{}", out.context());
    assert_eq!(
        out.events_of("fatal").len(),
        0,
        "never is not fatal{}",
        out.context()
    );
    assert_eq!(out.events_of("exit")[0]["code"], 3, "{}", out.context());
    assert_ended(&out, "done");
}

#[test]
fn on_failure_leaves_a_clean_exit_down() {
    let out = run_in(
        "onfailure-clean",
        &[(
            "brood.toml",
            "[program.ok]\nshell = \"echo ok\"\nrestart = \"on-failure\"\n\
             backoff = { initial = \"10ms\", max = \"10ms\" }\n",
        )],
        &[],
    )
    .run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(out.events_of("spawn").len(), 1, "{}", out.context());
    assert_eq!(out.events_of("restart").len(), 0, "{}", out.context());
    assert_ended(&out, "done");
}

#[test]
fn restart_always_restarts_a_clean_exit() {
    let config = format!(
        "[program.again]\ncommand = [{}]\nrestart = \"always\"\n\
         backoff = {{ initial = \"50ms\", max = \"50ms\" }}\n",
        script_toml("hello")
    );
    let brood = run_in("always", &[("brood.toml", &config)], &[]).start();
    brood.wait_spawned(3);
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let events = out.events();
    let exits = events_for(&events, "exit", "again.1");
    assert!(exits.len() >= 2, "{}", out.context());
    // Every exit that brood did not cause was a success, and was restarted.
    assert!(
        exits[0]["code"] == 0 && exits[1]["code"] == 0,
        "{}",
        out.context()
    );
    let restarts = events_for(&events, "restart", "again.1");
    assert!(restarts.len() >= 2, "{}", out.context());
    assert_eq!(out.events_of("fatal").len(), 0, "{}", out.context());
    assert_ended(&out, "signal:SIGTERM");
}

#[test]
fn restarts_of_one_program_leave_its_sibling_alone() {
    let config = format!(
        "[program.crasher]\ncommand = [{}, \"3\"]\n\
         backoff = {{ initial = \"20ms\", max = \"50ms\" }}\nmax_restarts = 2\n\n\
         [program.steady]\ncommand = [\"sleep\", \"100\"]\nstop_timeout = \"1s\"\n",
        script_toml("crash")
    );
    let brood = run_in("sibling", &[("brood.toml", &config)], &[]).start();
    brood.wait_events("crasher.1 fatal", |ev| {
        !events_for(ev, "fatal", "crasher.1").is_empty()
    });
    let events = brood.events();
    let steady = pids_of(&events_for(&events, "spawn", "steady.1"));
    assert_eq!(steady.len(), 1, "steady.1 was spawned once: {events:?}");
    assert!(alive(steady[0]), "steady.1 pid {} must still run", steady[0]);
    assert!(events_for(&events, "signal", "steady.1").is_empty(), "{events:?}");
    assert!(events_for(&events, "exit", "steady.1").is_empty(), "{events:?}");
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    // A program went fatal: status 1 even after a requested shutdown.
    out.assert_code(1).assert_no_panic();
    let events = out.events();
    assert_eq!(
        events_for(&events, "spawn", "crasher.1").len(),
        3,
        "{}",
        out.context()
    );
    assert_eq!(
        pids_of(&events_for(&events, "spawn", "steady.1")),
        steady,
        "{}",
        out.context()
    );
    assert_eq!(
        pids_of(&events_for(&events, "exit", "steady.1")),
        steady,
        "{}",
        out.context()
    );
    assert_ended(&out, "signal:SIGTERM");
}

// ---------------------------------------------------------------------------
// Stopping

/// A child that prints which of USR1, INT or TERM stopped it, then exits 0.
const TRAPPER: &str = r#"shell = '''
sleeper=
for sig in USR1 INT TERM; do
    trap "echo got $sig; kill \$sleeper 2>/dev/null; exit 0" $sig
done
echo ready
while :; do
    sleep 1 </dev/null >/dev/null 2>&1 &
    sleeper=$!
    wait $sleeper
done
'''
"#;

fn assert_stop_signal_reaches_child(name: &str, configured: &str, expected: &str) {
    let config = format!("[program.trap]\n{TRAPPER}stop_signal = \"{configured}\"\nstop_timeout = \"5s\"\n");
    let brood = run_in(name, &[("brood.toml", &config)], &[]).start();
    brood.wait_stdout("ready", |s| has_line(s, "trap.1", "ready"));
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let short = expected.trim_start_matches("SIG");
    let stdout = out.stdout_str();
    assert!(
        has_line(&stdout, "trap.1", &format!("got {short}")),
        "{}",
        out.context()
    );
    assert!(
        !stdout.contains("got TERM") || short == "TERM",
        "{}",
        out.context()
    );
    let events = out.events();
    let signals: Vec<&Value> = events_for(&events, "signal", "trap.1")
        .into_iter()
        .map(|e| &e["signal"])
        .collect();
    assert_eq!(signals, vec![&Value::from(expected)], "{}", out.context());
    let exit = events_for(&events, "exit", "trap.1");
    assert_eq!(exit.len(), 1, "{}", out.context());
    assert_eq!(exit[0]["code"], 0, "the trap exits 0{}", out.context());
}

#[test]
fn custom_stop_signal_usr1_is_what_the_child_receives() {
    assert_stop_signal_reaches_child("stopsig-usr1", "USR1", "SIGUSR1");
}

#[test]
fn custom_stop_signal_int_is_what_the_child_receives() {
    assert_stop_signal_reaches_child("stopsig-int", "SIGINT", "SIGINT");
}

const STUBBORN_CONFIG_TIMEOUT: &str = "300ms";

fn stubborn_config() -> String {
    format!(
        "[program.stubborn]\ncommand = [{}]\nstop_timeout = \"{STUBBORN_CONFIG_TIMEOUT}\"\n",
        script_toml("stubborn")
    )
}

/// The signals brood sent to `label`'s group, in order.
fn signals_to(events: &[Value], label: &str) -> Vec<String> {
    events_for(events, "signal", label)
        .iter()
        .map(|e| e["signal"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Shuts down a brood running `stubborn` with SIGTERM; checks that it got
/// SIGTERM first, was killed by SIGKILL after the stop_timeout, and brood
/// still exits 0.
fn shut_down_stubborn(name: &str) -> Output {
    let brood = run_in(name, &[("brood.toml", &stubborn_config())], &[]).start();
    brood.wait_stdout("stubborn ready", |s| has_line(s, "stubborn.1", "stubborn ready"));
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let events = out.events();
    let exit = events_for(&events, "exit", "stubborn.1");
    assert_eq!(exit.len(), 1, "{}", out.context());
    assert_eq!(exit[0]["signal"], "SIGKILL", "{}", out.context());
    assert!(
        exit[0]["runtime_ms"].as_i64().unwrap_or(0) >= 300,
        "SIGKILL only after the stop_timeout{}",
        out.context()
    );
    assert_ended(&out, "signal:SIGTERM");
    out
}

#[test]
fn stop_timeout_escalates_to_sigkill_for_a_child_ignoring_term() {
    let out = shut_down_stubborn("stoptimeout");
    let signals = signals_to(&out.events(), "stubborn.1");
    assert!(
        signals.len() >= 2 && signals[0] == "SIGTERM" && signals[1..].iter().all(|s| s == "SIGKILL"),
        "SIGTERM, then SIGKILL: {signals:?}{}",
        out.context()
    );
}

#[test]
fn stop_timeout_escalation_at_shutdown_sends_sigkill_once() {
    let out = shut_down_stubborn("stoptimeout-once");
    assert_eq!(
        signals_to(&out.events(), "stubborn.1"),
        ["SIGTERM", "SIGKILL"],
        "{}",
        out.context()
    );
}

#[test]
fn console_k_escalates_to_sigkill_after_stop_timeout() {
    let mut brood = run_in("console-k-kill", &[("brood.toml", &stubborn_config())], &["-i"])
        .stdin_pipe()
        .start();
    brood.wait_stdout("stubborn ready", |s| has_line(s, "stubborn.1", "stubborn ready"));
    brood.send("k stubborn.1\n");
    brood.wait_events("stubborn.1 exit", |ev| {
        !events_for(ev, "exit", "stubborn.1").is_empty()
    });
    let events = brood.events();
    assert_eq!(
        signals_to(&events, "stubborn.1"),
        ["SIGTERM", "SIGKILL"],
        "{events:?}"
    );
    let exit = events_for(&events, "exit", "stubborn.1");
    assert_eq!(exit[0]["signal"], "SIGKILL", "{events:?}");
    assert!(exit[0]["runtime_ms"].as_i64().unwrap_or(0) >= 300, "{events:?}");
    brood.send("q\n");
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        out.events_of("spawn").len(),
        1,
        "k keeps it down{}",
        out.context()
    );
}

#[test]
fn sigterm_with_a_dozen_instances_leaves_no_process_behind() {
    let brood = run_in(
        "dozen",
        &[(
            "brood.toml",
            "[program.nap]\ncommand = [\"sleep\", \"100\"]\nnumprocs = 12\nstop_timeout = \"2s\"\n",
        )],
        &[],
    )
    .start();
    let pids = brood.wait_spawned(12);
    assert_eq!(pids.len(), 12);
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert_eq!(out.events_of("exit").len(), 12, "{}", out.context());
    for pid in &pids {
        assert_eq!(
            kill(Pid::from_raw(*pid), None),
            Err(Errno::ESRCH),
            "pid {pid} is still there after brood exited{}",
            out.context()
        );
    }
    let labels: BTreeSet<String> = out
        .events_of("exit")
        .iter()
        .map(|e| e["label"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(labels.len(), 12, "{}", out.context());
    assert_ended(&out, "signal:SIGTERM");
}

// ---------------------------------------------------------------------------
// Selecting programs

#[test]
fn run_name_starts_only_that_program() {
    let mut brood = run_in(
        "select",
        &[(
            "brood.toml",
            "[program.web]\nshell = \"echo web ran\"\n\n[program.other]\nshell = \"touch ran-marker\"\n",
        )],
        &["web"],
    )
    .start();
    wait_exited(&mut brood);
    let marker_exists = brood.dir().join("ran-marker").exists();
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert!(!marker_exists, "other must not run{}", out.context());
    assert!(
        has_line(&out.stdout_str(), "web.1", "web ran"),
        "{}",
        out.context()
    );
    let labels: Vec<Value> = out
        .events_of("spawn")
        .iter()
        .map(|e| e["label"].clone())
        .collect();
    assert_eq!(labels, vec![Value::from("web.1")], "{}", out.context());
}

#[test]
fn run_unknown_name_is_a_usage_error() {
    let mut brood = run_in(
        "select-unknown",
        &[("brood.toml", "[program.web]\nshell = \"touch ran-marker\"\n")],
        &["nosuch"],
    )
    .start();
    wait_exited(&mut brood);
    let marker_exists = brood.dir().join("ran-marker").exists();
    let out = brood.finish();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains("nosuch");
    assert!(!marker_exists, "nothing may start{}", out.context());
    assert!(out.events_of("spawn").is_empty(), "{}", out.context());
}

// ---------------------------------------------------------------------------
// Config errors: message (with file:line:col), exit 2, nothing started

/// Runs brood on `files` with `args`, expects exit 2, `brood: error: ` and
/// `message` on stderr, an empty stdout and no child ever run (every config
/// here would `touch ran-marker`).
fn assert_config_error(name: &str, files: &[(&str, &str)], args: &[&str], message: &str) {
    let mut brood = run_in(name, files, args).start();
    wait_exited(&mut brood);
    let marker_exists = brood.dir().join("ran-marker").exists();
    let out = brood.finish();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains(&format!("brood: error: {message}"));
    assert!(out.stdout.is_empty(), "nothing on stdout{}", out.context());
    assert!(
        !marker_exists,
        "a child ran despite the bad config{}",
        out.context()
    );
    assert!(out.events_of("spawn").is_empty(), "{}", out.context());
}

#[test]
fn config_error_unknown_key() {
    assert_config_error(
        "err-unknown-key",
        &[(
            "brood.toml",
            "[program.web]\nshell = \"touch ran-marker\"\nrestat = \"never\"\n",
        )],
        &[],
        "brood.toml:3:1: unknown field `restat`",
    );
}

#[test]
fn config_error_numprocs_zero() {
    assert_config_error(
        "err-numprocs",
        &[(
            "brood.toml",
            "[program.web]\nshell = \"touch ran-marker\"\nnumprocs = 0\n",
        )],
        &[],
        "brood.toml:3:12: numprocs",
    );
}

#[test]
fn config_error_unknown_signal_name() {
    assert_config_error(
        "err-signal",
        &[(
            "brood.toml",
            "[program.web]\nshell = \"touch ran-marker\"\nstop_signal = \"NOPE\"\n",
        )],
        &[],
        "brood.toml:3:15: unknown signal 'NOPE'",
    );
}

#[test]
fn config_error_negative_duration() {
    assert_config_error(
        "err-negative",
        &[(
            "brood.toml",
            "[program.web]\nshell = \"touch ran-marker\"\nstop_timeout = \"-1s\"\n",
        )],
        &[],
        "brood.toml:3:16: stop_timeout: invalid duration '-1s'",
    );
}

#[test]
fn config_error_negative_number_duration() {
    assert_config_error(
        "err-negative-number",
        &[(
            "brood.toml",
            "[program.web]\nshell = \"touch ran-marker\"\nstop_timeout = -1\n",
        )],
        &[],
        "brood.toml:3:16: stop_timeout: invalid duration",
    );
}

#[test]
fn config_error_unparsable_duration() {
    assert_config_error(
        "err-duration",
        &[(
            "brood.toml",
            "[program.web]\nshell = \"touch ran-marker\"\nbackoff = { initial = \"soon\", max = \"1s\" }\n",
        )],
        &[],
        "brood.toml:3:23: backoff.initial: invalid duration 'soon'",
    );
}

#[test]
fn config_error_duplicate_toml_table() {
    assert_config_error(
        "err-dup-toml",
        &[(
            "brood.toml",
            "[program.web]\nshell = \"touch ran-marker\"\n\n[program.web]\nshell = \"touch ran-marker\"\n",
        )],
        &[],
        "brood.toml:4:10: duplicate key",
    );
}

#[test]
fn config_error_duplicate_procfile_name() {
    assert_config_error(
        "err-dup-procfile",
        &[("Procfile", "web: touch ran-marker\nweb: touch ran-marker\n")],
        &[],
        "Procfile:2:1: duplicate program name 'web'",
    );
}

#[test]
fn config_error_procfile_line_without_colon() {
    assert_config_error(
        "err-colon",
        &[("Procfile", "web: touch ran-marker\n# fine\nthis line has none\n")],
        &[],
        "Procfile:3:1: expected 'name: command'",
    );
}

#[test]
fn config_error_malformed_dotenv_line() {
    // The message names the file as brood found it (`./.env` or `.env`).
    let mut brood = run_in(
        "err-dotenv",
        &[
            ("Procfile", "web: touch ran-marker\n"),
            (".env", "A=1\nnot a pair\n"),
        ],
        &[],
    )
    .start();
    wait_exited(&mut brood);
    let marker_exists = brood.dir().join("ran-marker").exists();
    let out = brood.finish();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains("brood: error: ");
    out.assert_stderr_contains(".env:2: expected KEY=VALUE");
    assert!(!marker_exists, "{}", out.context());
    assert!(out.events_of("spawn").is_empty(), "{}", out.context());
}

#[test]
fn config_error_malformed_env_file_option() {
    assert_config_error(
        "err-envfile",
        &[
            ("Procfile", "web: touch ran-marker\n"),
            ("extra.env", "X=1\n\nbad line\n"),
        ],
        &["-e", "extra.env"],
        "extra.env:3: expected KEY=VALUE",
    );
}

#[test]
fn config_error_no_config_found() {
    assert_config_error("err-none", &[], &[], "no brood.toml or Procfile");
}

// ---------------------------------------------------------------------------
// Console

const THREE_SLEEPERS: &str = "[program.web]\ncommand = [\"sleep\", \"100\"]\nnumprocs = 3\n\
                              stop_timeout = \"2s\"\nbackoff = { initial = \"10ms\", max = \"10ms\" }\n";

fn start_console(name: &str) -> (Running, Vec<i32>) {
    let brood = run_in(name, &[("brood.toml", THREE_SLEEPERS)], &["-i"])
        .stdin_pipe()
        .start();
    brood.wait_spawned(3);
    let events = brood.events();
    let pids = ["web.1", "web.2", "web.3"]
        .iter()
        .map(|l| pids_of(&events_for(&events, "spawn", l))[0])
        .collect();
    (brood, pids)
}

#[test]
fn console_r_restarts_an_instance_with_a_new_pid() {
    let (mut brood, pids) = start_console("console-r");
    brood.send("r web.1\n");
    brood.wait_events("web.1 spawned again", |ev| {
        events_for(ev, "spawn", "web.1").len() == 2
    });
    let events = brood.events();
    let web1 = pids_of(&events_for(&events, "spawn", "web.1"));
    assert_ne!(web1[1], pids[0], "a new pid for web.1");
    assert_eq!(pids_of(&events_for(&events, "exit", "web.1")), vec![pids[0]]);
    assert!(alive(web1[1]));
    for (label, pid) in [("web.2", pids[1]), ("web.3", pids[2])] {
        assert!(
            events_for(&events, "exit", label).is_empty(),
            "{label} untouched: {events:?}"
        );
        assert!(alive(pid), "{label} still runs");
    }
    let rows = list(&mut brood, 3);
    let row1 = rows.iter().find(|r| r.0 == "web.1").expect("web.1 row");
    assert_eq!(row1.1, web1[1].to_string(), "l shows the new pid: {rows:?}");
    assert_eq!(row1.2, "running", "{rows:?}");
    brood.send("q\n");
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert_ended(&out, "console");
}

#[test]
fn console_k_stops_one_instance_and_its_siblings_keep_running() {
    let (mut brood, pids) = start_console("console-k");
    brood.send("k web.2\n");
    brood.wait_events("web.2 exit", |ev| !events_for(ev, "exit", "web.2").is_empty());
    // Nothing should happen in this window: a wrongful restart (the backoff
    // is 10 ms) would spawn web.2 again well within it.
    let stays_down = holds_for(Duration::from_millis(200), || {
        events_for(&brood.events(), "spawn", "web.2").len() == 1
    });
    assert!(stays_down, "web.2 was restarted after k: {:?}", brood.events());
    let rows = list(&mut brood, 3);
    let state = |label: &str| rows.iter().find(|r| r.0 == label).cloned().expect(label);
    assert_eq!(state("web.2").2, "stopped", "{rows:?}");
    assert_eq!(
        state("web.1"),
        ("web.1".into(), pids[0].to_string(), "running".into())
    );
    assert_eq!(
        state("web.3"),
        ("web.3".into(), pids[2].to_string(), "running".into())
    );
    let events = brood.events();
    assert_eq!(
        events_for(&events, "spawn", "web.2").len(),
        1,
        "web.2 stays down: {events:?}"
    );
    assert!(events_for(&events, "restart", "web.2").is_empty(), "{events:?}");
    assert!(alive(pids[0]) && alive(pids[2]));
    assert!(!alive(pids[1]));
    brood.send("q\n");
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let events = out.events();
    for (label, pid) in [("web.1", pids[0]), ("web.3", pids[2])] {
        assert_eq!(
            pids_of(&events_for(&events, "spawn", label)),
            vec![pid],
            "{}",
            out.context()
        );
    }
}

#[test]
fn console_q_shuts_down_with_status_0() {
    let (mut brood, pids) = start_console("console-q");
    brood.send("q\n");
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert_ended(&out, "console");
    assert_eq!(out.events_of("exit").len(), 3, "{}", out.context());
    for pid in pids {
        assert!(process_dead(pid), "pid {pid} survived{}", out.context());
    }
}

#[test]
fn console_end_of_input_shuts_down_with_status_0() {
    let (mut brood, _) = start_console("console-eof");
    brood.close_stdin();
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert_ended(&out, "eof");
}

#[test]
fn console_unknown_command_is_reported_and_ignored() {
    let (mut brood, pids) = start_console("console-unknown");
    brood.send("xyz\n");
    brood.wait_stderr("unknown command", |s| {
        s.contains("unknown command 'xyz' (h for help)")
    });
    let rows = list(&mut brood, 3);
    for (i, label) in ["web.1", "web.2", "web.3"].iter().enumerate() {
        let row = rows.iter().find(|r| r.0 == *label).expect("row");
        assert_eq!(
            (row.1.as_str(), row.2.as_str()),
            (pids[i].to_string().as_str(), "running")
        );
    }
    brood.send("q\n");
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert_eq!(out.events_of("spawn").len(), 3, "{}", out.context());
}

// ---------------------------------------------------------------------------
// The worked examples in child-scripts/examples/

fn examples_dir() -> PathBuf {
    script_dir().join("examples")
}

/// Waits until every `(label, text)` has been printed, then quits with `q`.
fn run_example(mut brood: Running, expect: &[(&str, &str)]) -> Output {
    brood.wait_stdout("the example's first lines", |s| {
        expect.iter().all(|(label, text)| has_line(s, label, text))
    });
    brood.send("q\n");
    let out = brood.finish();
    out.assert_no_panic();
    out
}

const TOML_EXAMPLE_LINES: &[(&str, &str)] = &[
    ("hello.1", "Hello from child PID"),
    ("hello.2", "Hello from child PID"),
    ("hello.3", "Hello from child PID"),
    ("ticker.1", "tick from the ticker"),
];

#[test]
fn example_brood_toml_runs_from_its_directory() {
    let brood = Brood::new("example-toml")
        .shell(r#"cd "$SCRIPTS/examples" && exec "$BROOD" run -i --events "$EVENTS" --socket "$EVENTS.sock""#)
        .stdin_pipe()
        .start();
    let out = run_example(brood, TOML_EXAMPLE_LINES);
    out.assert_code(0);
    assert_ended(&out, "console");
    let names: BTreeSet<String> = out
        .events_of("spawn")
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["crash".to_owned(), "hello".to_owned(), "ticker".to_owned()]),
        "{}",
        out.context()
    );
}

#[test]
fn example_brood_toml_runs_with_f_from_elsewhere() {
    let config = examples_dir().join("brood.toml");
    // The socket would sit beside the shared example: keep it in this test's dir.
    let socket = std::env::temp_dir().join(format!("brood-example-{}.sock", std::process::id()));
    let brood = run_in(
        "example-toml-f",
        &[],
        &[
            "-i",
            "-f",
            config.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
        ],
    )
    .stdin_pipe()
    .start();
    let out = run_example(brood, TOML_EXAMPLE_LINES);
    out.assert_code(0);
    assert_ended(&out, "console");
    assert!(out.events_of("spawn_failed").is_empty(), "{}", out.context());
}

#[test]
fn example_procfile_runs_with_its_dotenv() {
    let brood = Brood::new("example-procfile")
        .shell(r#"cd "$SCRIPTS/examples" && exec "$BROOD" run -i -f Procfile --events "$EVENTS" --socket "$EVENTS.sock""#)
        .stdin_pipe()
        .start();
    let out = run_example(
        brood,
        &[
            ("hello.1", "Hello from child PID"),
            ("count.1", "line 3"),
            ("greet.1", "Hello from brood, from the .env file"),
            ("ticker.1", "tick"),
        ],
    );
    out.assert_code(0);
    assert_ended(&out, "console");
    assert!(out.events_of("spawn_failed").is_empty(), "{}", out.context());
}

#[test]
fn scale_flag_sets_instances_and_each_gets_ps_and_port() {
    let mut brood = run_in(
        "scale-flag",
        &[(
            "Procfile",
            "web: echo \"$PS on $PORT\"\napi: echo \"$PS on $PORT\"\n",
        )],
        &["-c", "web=3"],
    )
    .start();
    wait_exited(&mut brood);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let stdout = out.stdout_str();
    for (label, text) in [
        ("web.1", "web.1 on 5000"),
        ("web.2", "web.2 on 5001"),
        ("web.3", "web.3 on 5002"),
        ("api.1", "api.1 on 5100"),
    ] {
        assert!(has_line(&stdout, label, text), "{label}: {text}{}", out.context());
    }
}

#[test]
fn scale_flag_with_unknown_program_is_a_usage_error() {
    let out = run_in(
        "scale-unknown",
        &[("Procfile", "web: touch ran-marker\n")],
        &["-c", "nope=2"],
    )
    .run();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains("no program 'nope'");
    assert!(out.events_of("spawn").is_empty(), "{}", out.context());
}
