//! What the children are handed at exec (fds, signal state, process group),
//! and brood's own process hygiene (one thread, no zombies).

mod util;

use std::time::Duration;

use util::*;

/// The `inspect.1 | ...` payloads, keyed by their first word.
fn inspect_report(out: &Output) -> Vec<String> {
    out.stdout_lines()
        .iter()
        .map(|l| {
            let (label, rest) = split_prefixed(l).unwrap_or_else(|| panic!("unprefixed {l:?}"));
            assert_eq!(label, "inspect.1");
            rest.to_owned()
        })
        .collect()
}

#[test]
fn children_see_only_fds_0_1_2() {
    // brood itself inherits a stray fd 7 without close-on-exec, as from a
    // careless parent; the child must not see it.
    let out = Brood::new("fds")
        .leak_fd(7)
        .opts(["-n", "1"])
        .script("inspect")
        .run();
    out.assert_code(0);
    let report = inspect_report(&out);
    let fds = report.iter().find(|l| l.starts_with("fds:")).expect("fds line");
    assert_eq!(fds, "fds: 0 1 2", "{}", out.context());
}

#[test]
fn children_start_with_empty_signal_mask_and_no_ignored_signals() {
    let out = Brood::new("sigstate").opts(["-n", "1"]).script("inspect").run();
    out.assert_code(0);
    let report = inspect_report(&out);
    for field in ["SigBlk:", "SigIgn:"] {
        let line = report
            .iter()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} line{}", out.context()));
        let value = line[field.len()..].trim();
        assert_eq!(
            value,
            "0000000000000000",
            "{field} must be all zeros{}",
            out.context()
        );
    }
}

/// Starts an interactive brood with `count` live `lastwords` children.
fn session_with_live_children(name: &str, count: usize) -> (Running, Vec<i32>) {
    let mut brood = Brood::new(name)
        .opts(["-i"])
        .stdin_pipe()
        .script("lastwords")
        .start();
    for _ in 0..count {
        brood.send("\n");
    }
    brood.wait_stdout(&format!("{count} ready lines"), |s| {
        s.matches("| ready").count() >= count
    });
    let pids = brood.wait_spawned(count);
    (brood, pids)
}

#[test]
fn children_run_in_their_own_process_group() {
    let (mut brood, pids) = session_with_live_children("pgid", 3);
    for pid in &pids {
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(*pid)))
            .expect("getpgid")
            .as_raw();
        assert_eq!(pgid, *pid, "child {pid} is not its own group leader");
    }
    brood.close_stdin();
    brood.finish().assert_code(0);
}

#[test]
fn brood_runs_a_single_thread() {
    let (mut brood, pids) = session_with_live_children("threads", 4);
    let pid = brood.pid();
    // Sample a few times while brood is busy with live children.
    for _ in 0..5 {
        assert_eq!(thread_count(pid), Some(1), "brood must be single-threaded");
        brood.send("l\n");
        // A sampling interval, not an ordering: any thread brood started
        // to serve the command would show in one of the samples.
        std::thread::sleep(Duration::from_millis(20));
    }
    for child in &pids {
        let state = proc_state(*child);
        assert!(
            matches!(state, Some('S') | Some('R')),
            "child {child} in state {state:?}"
        );
    }
    brood.close_stdin();
    brood.finish().assert_code(0);
}

#[test]
fn exited_children_are_reaped_promptly() {
    let mut brood = Brood::new("zombies")
        .opts(["-i"])
        .stdin_pipe()
        .script("hello")
        .start();
    let pid = brood.pid();
    for _ in 0..10 {
        brood.send("\n");
    }
    brood.wait_stdout("10 hello lines", |s| s.matches("Hello from child").count() >= 10);
    let reaped = try_wait_for(Duration::from_secs(3), || {
        children_of(pid).iter().all(|&(_, state)| state != 'Z')
    });
    assert!(reaped, "zombies left under brood: {:?}", children_of(pid));
    brood.wait_events("10 exit events", |ev| events_of(ev, "exit").len() >= 10);
    assert!(brood.is_running(), "brood must still be running the console");
    brood.close_stdin();
    brood.finish().assert_code(0);
}

#[test]
fn many_short_children_leave_no_zombies() {
    // A storm of exits: SIGCHLDs coalesce, and every child must still be reaped.
    let out = Brood::new("zombie-storm")
        .opts(["-n", "100"])
        .prog("/bin/true")
        .run();
    out.assert_code(0);
    assert_eq!(out.events_of("exit").len(), 100, "{}", out.context());
    out.assert_stderr_contains("summary: spawned 100, succeeded 100");
}
