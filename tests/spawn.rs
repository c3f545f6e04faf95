//! `brood spawn` in batch mode: counters, arguments, exec failures, exit
//! statuses, the concurrency bound, output modes and the events file.

mod util;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use util::*;

/// Parses `LABEL | Hello from child PID <pid>, counter <n>` lines.
fn hello_lines(out: &Output) -> Vec<(String, i64, i64)> {
    out.stdout_lines()
        .iter()
        .map(|line| {
            let (label, rest) = split_prefixed(line)
                .unwrap_or_else(|| panic!("not a prefixed line: {line:?}{}", out.context()));
            let rest = rest
                .strip_prefix("Hello from child PID ")
                .unwrap_or_else(|| panic!("not a hello line: {line:?}{}", out.context()));
            let (pid, n) = rest.split_once(", counter ").expect("hello format");
            (label.to_owned(), pid.parse().unwrap(), n.parse().unwrap())
        })
        .collect()
}

#[test]
fn batch_spawns_counters_one_to_n() {
    let out = Brood::new("counters").opts(["-n", "5"]).script("hello").run();
    out.assert_code(0).assert_no_panic();
    let mut lines = hello_lines(&out);
    lines.sort_by_key(|l| l.2);
    let counters: Vec<i64> = lines.iter().map(|l| l.2).collect();
    assert_eq!(counters, vec![1, 2, 3, 4, 5], "{}", out.context());
    for (label, _, n) in &lines {
        assert_eq!(label, &format!("hello.{n}"), "{}", out.context());
    }
    let mut ns = spawn_counters(&out.events());
    ns.sort();
    assert_eq!(ns, vec![1, 2, 3, 4, 5], "{}", out.context());
}

#[test]
fn output_label_matches_the_spawned_pid() {
    let out = Brood::new("label-pid").opts(["-n", "3"]).script("hello").run();
    out.assert_code(0);
    let events = out.events();
    for (label, pid, n) in hello_lines(&out) {
        assert_eq!(
            label_of(&events, pid as i32).as_deref(),
            Some(label.as_str()),
            "{}",
            out.context()
        );
        let spawn = events_of(&events, "spawn")
            .into_iter()
            .find(|e| e["pid"].as_i64() == Some(pid))
            .unwrap()
            .clone();
        assert_eq!(spawn["n"].as_i64(), Some(n), "{}", out.context());
        assert_eq!(spawn["name"], "hello", "{}", out.context());
    }
}

#[test]
fn placeholder_n_is_substituted_instead_of_appended() {
    let out = Brood::new("placeholder")
        .opts(["-n", "3"])
        .prog("/bin/echo")
        .args(["pre-{n}-post"])
        .run();
    out.assert_code(0);
    let mut got: Vec<(String, String)> = out
        .stdout_lines()
        .iter()
        .map(|l| {
            let (label, rest) = split_prefixed(l).expect("prefixed line");
            (label.to_owned(), rest.to_owned())
        })
        .collect();
    got.sort();
    let want: Vec<(String, String)> = (1..=3)
        .map(|n| (format!("echo.{n}"), format!("pre-{n}-post")))
        .collect();
    assert_eq!(got, want, "{}", out.context());
}

#[test]
fn counter_is_appended_as_the_last_argument() {
    let out = Brood::new("appended")
        .opts(["-n", "2"])
        .prog("/bin/echo")
        .args(["a", "b"])
        .run();
    out.assert_code(0);
    let mut rests: Vec<String> = out
        .stdout_lines()
        .iter()
        .map(|l| split_prefixed(l).expect("prefixed").1.to_owned())
        .collect();
    rests.sort();
    assert_eq!(rests, vec!["a b 1", "a b 2"], "{}", out.context());
}

#[test]
fn start_sets_the_first_counter() {
    let out = Brood::new("start")
        .opts(["-n", "3", "--start", "7"])
        .script("hello")
        .run();
    out.assert_code(0);
    let mut lines = hello_lines(&out);
    lines.sort_by_key(|l| l.2);
    let got: Vec<(String, i64)> = lines.iter().map(|l| (l.0.clone(), l.2)).collect();
    let want: Vec<(String, i64)> = (7..=9).map(|n| (format!("hello.{n}"), n)).collect();
    assert_eq!(got, want, "{}", out.context());
    let mut ns = spawn_counters(&out.events());
    ns.sort();
    assert_eq!(ns, vec![7, 8, 9], "{}", out.context());
}

/// Runs `-n 1 -- PROG` where PROG cannot be executed and checks the report.
fn assert_exec_failure(out: &Output, prog: &str, reason: &str, errno: i64) {
    out.assert_code(1).assert_no_panic();
    out.assert_stderr_contains(&format!("cannot exec '{prog}'"));
    out.assert_stderr_contains(reason);
    let failed = out.events_of("spawn_failed");
    assert_eq!(failed.len(), 1, "{}", out.context());
    let name = prog.rsplit('/').next().unwrap();
    assert_eq!(failed[0]["name"], name, "{}", out.context());
    assert_eq!(failed[0]["label"], format!("{name}.1"), "{}", out.context());
    assert_eq!(failed[0]["n"].as_i64(), Some(1), "{}", out.context());
    assert_eq!(failed[0]["stage"], "exec", "{}", out.context());
    assert_eq!(failed[0]["errno"].as_i64(), Some(errno), "{}", out.context());
    assert!(
        failed[0]["error"].as_str().is_some_and(|e| e.contains(reason)),
        "{}",
        out.context()
    );
    let summary = out.events_of("summary");
    assert_eq!(
        summary.last().unwrap()["spawn_failed"].as_i64(),
        Some(1),
        "{}",
        out.context()
    );
}

#[test]
fn exec_failure_missing_program_reports_the_os_reason() {
    let out = Brood::new("exec-missing")
        .opts(["-n", "1"])
        .prog("/nonexistent/nope")
        .run();
    assert_exec_failure(&out, "/nonexistent/nope", "No such file or directory", 2);
}

#[test]
fn exec_failure_program_not_on_path_reports_the_os_reason() {
    let out = Brood::new("exec-not-on-path")
        .opts(["-n", "1"])
        .prog("brood-no-such-program-xyz")
        .run();
    assert_exec_failure(&out, "brood-no-such-program-xyz", "No such file or directory", 2);
}

#[test]
fn exec_failure_non_executable_file_reports_permission_denied() {
    let b = Brood::new("exec-noexec");
    let file = b.dir().join("not-executable");
    std::fs::write(&file, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let prog = file.to_str().unwrap().to_owned();
    let out = b.opts(["-n", "1"]).prog(&prog).run();
    assert_exec_failure(&out, &prog, "Permission denied", 13);
}

#[test]
fn exec_failure_directory_reports_permission_denied() {
    let b = Brood::new("exec-dir");
    let dir = b.dir().join("a-directory");
    std::fs::create_dir(&dir).unwrap();
    let prog = dir.to_str().unwrap().to_owned();
    let out = b.opts(["-n", "1"]).prog(&prog).run();
    assert_exec_failure(&out, &prog, "Permission denied", 13);
}

#[test]
fn exec_failures_do_not_stop_the_batch() {
    let out = Brood::new("exec-carry-on")
        .opts(["-n", "3"])
        .prog("/nonexistent/nope")
        .run();
    out.assert_code(1).assert_no_panic();
    assert_eq!(out.events_of("spawn_failed").len(), 3, "{}", out.context());
    out.assert_stderr_contains("spawn_failed 3");
}

#[test]
fn summary_line_counts_children() {
    let out = Brood::new("summary-line").opts(["-n", "3"]).script("hello").run();
    out.assert_code(0);
    let last = out.stderr_lines().last().cloned().unwrap_or_default();
    assert_eq!(
        last,
        "brood: summary: spawned 3, succeeded 3, failed 0, spawn_failed 0, stopped 0",
        "{}",
        out.context()
    );
}

#[test]
fn exit_status_is_zero_when_every_child_succeeds() {
    let out = Brood::new("exit-0")
        .opts(["-n", "2"])
        .script("crash")
        .args(["0"])
        .run();
    out.assert_code(0).assert_no_panic();
}

#[test]
fn exit_status_is_one_when_a_child_exits_nonzero() {
    let out = Brood::new("exit-1")
        .opts(["-n", "1"])
        .script("crash")
        .args(["3"])
        .run();
    out.assert_code(1).assert_no_panic();
    let exits = out.events_of("exit");
    assert_eq!(exits.len(), 1, "{}", out.context());
    assert_eq!(exits[0]["code"].as_i64(), Some(3), "{}", out.context());
    assert!(exits[0]["signal"].is_null(), "{}", out.context());
    out.assert_stderr_contains("crash.1 | crashing");
    out.assert_stderr_contains("exited with code 3");
}

#[test]
fn exit_status_is_one_when_a_child_is_killed_by_a_signal() {
    let out = Brood::new("exit-signal")
        .opts(["-n", "1"])
        .script("crash")
        .args(["SEGV"])
        .run();
    out.assert_code(1).assert_no_panic();
    let exits = out.events_of("exit");
    assert_eq!(exits.len(), 1, "{}", out.context());
    assert!(exits[0]["code"].is_null(), "{}", out.context());
    assert_eq!(exits[0]["signal"], "SIGSEGV", "{}", out.context());
    assert_eq!(exits[0]["core"], false, "{}", out.context());
    out.assert_stderr_contains("killed by signal SIGSEGV");
}

#[test]
fn exit_status_is_one_when_one_of_many_children_fails() {
    // crash {n} exits with its own counter: 0 for the first, 1 for the second.
    let out = Brood::new("exit-mixed")
        .opts(["-n", "2", "--start", "0"])
        .script("crash")
        .args(["{n}"])
        .run();
    out.assert_code(1);
    let summary = out.events_of("summary");
    let s = summary.last().unwrap();
    assert_eq!(
        (s["succeeded"].as_i64(), s["failed"].as_i64()),
        (Some(1), Some(1)),
        "{}",
        out.context()
    );
}

#[test]
fn unknown_option_is_a_usage_error() {
    let out = Brood::new("usage-option")
        .raw_args(["spawn", "--no-such-option", "--", "true"])
        .run();
    out.assert_code(2).assert_no_panic();
    assert!(out.stdout.is_empty(), "{}", out.context());
}

#[test]
fn missing_program_is_a_usage_error() {
    let out = Brood::new("usage-prog").raw_args(["spawn", "-n", "1"]).run();
    out.assert_code(2).assert_no_panic();
}

#[test]
fn invalid_grace_duration_is_a_usage_error() {
    let out = Brood::new("usage-grace")
        .raw_args(["spawn", "-n", "1", "--grace", "soon", "--", "true"])
        .run();
    out.assert_code(2).assert_no_panic();
}

#[test]
fn jobs_limit_bounds_concurrency() {
    // Each child sleeps 0.2 s; the counter lands in $0 of `sh -c`.
    let out = Brood::new("jobs")
        .opts(["-n", "6", "-j", "2"])
        .prog("/bin/sh")
        .args(["-c", "sleep 0.2"])
        .run();
    out.assert_code(0);
    let mut alive = 0i64;
    let mut most = 0i64;
    for e in out.events() {
        match e["event"].as_str() {
            Some("spawn") => alive += 1,
            Some("exit") => alive -= 1,
            _ => {}
        }
        most = most.max(alive);
    }
    assert_eq!(out.events_of("spawn").len(), 6, "{}", out.context());
    assert_eq!(
        most,
        2,
        "at most 2 children alive at once, and 2 at some point{}",
        out.context()
    );
    // Also from the timestamps: sort spawns and exits by time.
    let mut marks: Vec<(f64, i64)> = Vec::new();
    for e in out.events() {
        let ts = e["ts"].as_f64().unwrap();
        match e["event"].as_str() {
            Some("spawn") => marks.push((ts, 1)),
            Some("exit") => marks.push((ts, -1)),
            _ => {}
        }
    }
    // Exits first at equal timestamps: a slot is freed, then reused.
    marks.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
    let mut alive = 0;
    for (_, d) in marks {
        alive += d;
        assert!(alive <= 2, "more than 2 alive by the timestamps{}", out.context());
    }
}

#[test]
fn inherit_leaves_child_output_unprefixed() {
    let out = Brood::new("inherit")
        .opts(["-n", "2", "--inherit"])
        .script("hello")
        .run();
    out.assert_code(0);
    let mut lines = out.stdout_lines();
    lines.sort();
    assert_eq!(lines.len(), 2, "{}", out.context());
    for (line, n) in lines.iter().zip(1..) {
        assert!(
            line.starts_with("Hello from child PID "),
            "{line:?}{}",
            out.context()
        );
        assert!(
            line.ends_with(&format!(", counter {n}")),
            "{line:?}{}",
            out.context()
        );
    }
}

#[test]
fn no_prefix_writes_bare_lines() {
    let out = Brood::new("no-prefix")
        .opts(["-n", "2", "--no-prefix"])
        .script("hello")
        .run();
    out.assert_code(0);
    let lines = out.stdout_lines();
    assert_eq!(lines.len(), 2, "{}", out.context());
    for line in &lines {
        assert!(
            line.starts_with("Hello from child PID "),
            "{line:?}{}",
            out.context()
        );
    }
}

#[test]
fn no_prefix_still_writes_whole_lines() {
    let out = Brood::new("no-prefix-whole")
        .opts(["-n", "4", "--no-prefix"])
        .script("flood")
        .args(["2000"])
        .run();
    out.assert_code(0);
    let mut per_tag: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in out.stdout_lines() {
        let mut parts = line.splitn(3, ' ');
        let (tag, seq, pad) = (parts.next().unwrap(), parts.next(), parts.next());
        let seq: u64 = seq
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("broken line {line:?}"));
        assert_eq!(
            pad,
            Some("o".repeat(10 + (seq % 90) as usize).as_str()),
            "broken line {line:?}"
        );
        per_tag.entry(tag.to_owned()).or_default().push(seq);
    }
    assert_eq!(per_tag.len(), 4, "{}", out.context());
    for seqs in per_tag.values() {
        assert_eq!(seqs, &(1..=2000).collect::<Vec<u64>>());
    }
}

#[test]
fn events_file_summary_is_the_last_line() {
    let out = Brood::new("events-summary")
        .opts(["-n", "3"])
        .script("crash")
        .args(["{n}"])
        .run();
    out.assert_code(1);
    let events = out.events();
    assert!(!events.is_empty(), "{}", out.context());
    for e in &events {
        assert!(e["ts"].is_f64(), "ts must be a float: {e}");
        assert!(e["event"].is_string(), "event must be a string: {e}");
    }
    let last = events.last().unwrap();
    assert_eq!(last["event"], "summary", "{}", out.context());
    assert_eq!(last["spawned"].as_i64(), Some(3), "{}", out.context());
    assert_eq!(last["succeeded"].as_i64(), Some(0), "{}", out.context());
    assert_eq!(last["failed"].as_i64(), Some(3), "{}", out.context());
    assert_eq!(last["spawn_failed"].as_i64(), Some(0), "{}", out.context());
    assert_eq!(events_of(&events, "summary").len(), 1, "{}", out.context());
    let shutdown = out.events_of("shutdown");
    assert_eq!(shutdown.len(), 1, "{}", out.context());
    assert_eq!(shutdown[0]["reason"], "done", "{}", out.context());
}

#[test]
fn exit_events_carry_code_and_runtime() {
    let out = Brood::new("exit-events").opts(["-n", "1"]).script("hello").run();
    out.assert_code(0);
    let spawn = &out.events_of("spawn")[0];
    let exit = &out.events_of("exit")[0];
    assert_eq!(exit["label"], spawn["label"], "{}", out.context());
    assert_eq!(exit["pid"], spawn["pid"], "{}", out.context());
    assert_eq!(exit["code"].as_i64(), Some(0), "{}", out.context());
    assert!(exit["signal"].is_null(), "{}", out.context());
    assert_eq!(exit["core"], false, "{}", out.context());
    assert!(
        exit["runtime_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{}",
        out.context()
    );
}

#[test]
fn exit_codes_0_to_255_are_recorded() {
    // crash {n} exits with its own counter.
    let out = Brood::new("exit-matrix")
        .opts(["-n", "256", "--start", "0", "-j", "32"])
        .script("crash")
        .args(["{n}"])
        .run();
    out.assert_code(1).assert_no_panic();
    let events = out.events();
    let labels: BTreeMap<String, i64> = events_of(&events, "spawn")
        .iter()
        .map(|e| (e["label"].as_str().unwrap().to_owned(), e["n"].as_i64().unwrap()))
        .collect();
    let exits = events_of(&events, "exit");
    assert_eq!(exits.len(), 256, "{}", out.context());
    for e in exits {
        let n = labels[e["label"].as_str().unwrap()];
        assert_eq!(e["code"].as_i64(), Some(n), "exit event for n={n}: {e}");
        assert!(e["signal"].is_null(), "{e}");
    }
    let summary = out.events_of("summary");
    assert_eq!(summary[0]["succeeded"].as_i64(), Some(1), "{}", out.context());
    assert_eq!(summary[0]["failed"].as_i64(), Some(255), "{}", out.context());
}

#[test]
fn signal_deaths_are_recorded_by_name() {
    const NAMES: [&str; 15] = [
        "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE", "SIGKILL",
        "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM",
    ];
    // The counter (1..=15) lands in $0: the child kills itself with it.
    let out = Brood::new("signal-matrix")
        .opts(["-n", "15"])
        .prog("/bin/sh")
        .args(["-c", "ulimit -c 0; kill -$0 $$; exit 99"])
        .run();
    out.assert_code(1).assert_no_panic();
    let events = out.events();
    let labels: BTreeMap<String, i64> = events_of(&events, "spawn")
        .iter()
        .map(|e| (e["label"].as_str().unwrap().to_owned(), e["n"].as_i64().unwrap()))
        .collect();
    let exits = events_of(&events, "exit");
    assert_eq!(exits.len(), 15, "{}", out.context());
    for e in exits {
        let n = labels[e["label"].as_str().unwrap()];
        assert_eq!(
            e["signal"],
            NAMES[n as usize - 1],
            "exit event for signal {n}: {e}"
        );
        assert!(e["code"].is_null(), "{e}");
        assert_eq!(e["core"], false, "core dumps are off: {e}");
    }
}
