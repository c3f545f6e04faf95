//! The interactive console of `brood spawn`: on a pseudo-terminal, on a pipe
//! with `-i`, with junk input, and stopping single children with `k`.

mod util;

use util::*;

#[test]
fn console_on_terminal_spawns_lists_and_quits() {
    let mut pty = Brood::new("pty")
        .env("NO_COLOR", "1")
        .script("lastwords")
        .start_pty();
    // An empty line spawns a child.
    pty.send("\n");
    pty.wait_events("a spawn", |ev| events_of(ev, "spawn").len() == 1);
    pty.wait_output_after(0, "ready");
    // `l` lists it.
    let mark = pty.mark();
    pty.send("l\n");
    pty.wait_output_after(mark, "lastwords.1");
    // Junk is answered, nothing else happens.
    let mark = pty.mark();
    pty.send("xyz\n");
    pty.wait_output_after(mark, "unknown command 'xyz' (h for help)");
    // `q` shuts down gracefully.
    pty.send("q\n");
    let (status, output, events) = pty.finish();
    assert_eq!(status.code(), Some(0), "terminal:\n{output}");
    assert!(!output.contains("panicked"), "terminal:\n{output}");
    let shutdown = events_of(&events, "shutdown");
    assert_eq!(shutdown.len(), 1, "events: {events:?}");
    assert_eq!(shutdown[0]["reason"], "console", "events: {events:?}");
}

#[test]
fn console_reports_unknown_command() {
    let mut brood = Brood::new("unknown")
        .opts(["-i"])
        .stdin_pipe()
        .script("hello")
        .start();
    brood.send("xyz\n");
    brood.wait_stderr("unknown command", |s| {
        s.contains("unknown command 'xyz' (h for help)")
    });
    brood.close_stdin();
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert!(
        out.events_of("spawn").is_empty(),
        "junk must not spawn{}",
        out.context()
    );
}

#[test]
fn console_empty_line_and_s_each_spawn_one_child() {
    let mut brood = Brood::new("spawn-keys")
        .opts(["-i"])
        .stdin_pipe()
        .script("hello")
        .start();
    brood.send("\n");
    brood.send("s\n");
    brood.wait_events("two spawns", |ev| events_of(ev, "spawn").len() == 2);
    brood.close_stdin();
    let out = brood.finish();
    out.assert_code(0);
    let mut ns = spawn_counters(&out.events());
    ns.sort();
    assert_eq!(ns, vec![1, 2], "{}", out.context());
}

#[test]
fn console_help_is_printed() {
    let mut brood = Brood::new("help")
        .opts(["-i"])
        .stdin_pipe()
        .script("hello")
        .start();
    let before = brood.stderr().len();
    brood.send("h\n");
    brood.wait_stderr("help text", |s| s.len() > before && s[before..].contains('q'));
    brood.send("?\n");
    brood.close_stdin();
    let out = brood.finish();
    out.assert_code(0);
    assert!(!out.stderr_str().contains("unknown command"), "{}", out.context());
}

#[test]
fn console_q_shuts_down_with_reason_console() {
    let mut brood = Brood::new("quit")
        .opts(["-i"])
        .stdin_pipe()
        .script("lastwords")
        .start();
    brood.send("\n");
    brood.wait_stdout("ready", |s| s.contains("| ready"));
    brood.send("q\n");
    // stdin stays open: `q` alone must end the session.
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let shutdown = out.events_of("shutdown");
    assert_eq!(shutdown.len(), 1, "{}", out.context());
    assert_eq!(shutdown[0]["reason"], "console", "{}", out.context());
    assert!(
        out.stdout_str().contains("lastwords.1 | last words 1"),
        "{}",
        out.context()
    );
}

/// Deterministic junk: xorshift bytes.
fn junk(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

#[test]
fn console_junk_never_crashes_brood() {
    // Random bytes (invalid UTF-8, control characters, stray newlines) and NULs.
    let mut input = junk(64 * 1024, 0x9e3779b97f4a7c15);
    input.extend_from_slice(&[0u8; 4096]);
    input.push(b'\n');
    input.extend(junk(4096, 42));
    let out = Brood::new("junk").opts(["-i"]).stdin(input).script("hello").run();
    out.assert_no_panic();
    assert_eq!(out.code(), Some(0), "{}", out.context());
    out.assert_stderr_contains("brood: summary: ");
    let events = out.events();
    assert_eq!(events.last().unwrap()["event"], "summary", "{}", out.context());
    assert_eq!(
        events_of(&events, "shutdown")[0]["reason"],
        "eof",
        "{}",
        out.context()
    );
}

#[test]
fn console_one_mib_line_is_refused_and_the_console_keeps_working() {
    let mut input = vec![b'A'; 1024 * 1024];
    input.extend_from_slice(b"\nxyz\n");
    let out = Brood::new("long-command")
        .opts(["-i"])
        .stdin(input)
        .script("hello")
        .watchdog(std::time::Duration::from_secs(10))
        .run();
    out.assert_no_panic().assert_code(0);
    out.assert_stderr_contains("unknown command 'xyz' (h for help)");
    assert_eq!(out.events_of("shutdown")[0]["reason"], "eof", "{}", out.context());
    assert!(out.events_of("spawn").is_empty(), "{}", out.context());
}

#[test]
fn console_kill_label_stops_only_that_child() {
    let mut brood = Brood::new("kill-label")
        .opts(["-i"])
        .stdin_pipe()
        .script("lastwords")
        .start();
    for _ in 0..3 {
        brood.send("\n");
    }
    brood.wait_stdout("3 ready", |s| s.matches("| ready").count() == 3);
    let pids = brood.wait_spawned(3);
    let events = brood.events();
    let target = label_of(&events, pids[1]).unwrap();
    brood.send(&format!("k {target}\n"));
    brood.wait_events("exit of the stopped child", |ev| {
        events_of(ev, "exit")
            .iter()
            .any(|e| e["label"] == target.as_str())
    });
    let events = brood.events();
    let exits = events_of(&events, "exit");
    assert_eq!(exits.len(), 1, "only {target} stops: {exits:?}");
    for &pid in [pids[0], pids[2]].iter() {
        assert!(!process_dead(pid), "child {pid} must keep running");
    }
    assert!(brood.is_running());
    brood.close_stdin();
    let out = brood.finish();
    out.assert_code(0);
    assert!(
        out.stdout_str().contains(&format!("{target} | last words")),
        "{}",
        out.context()
    );
}

#[test]
fn console_kill_pid_stops_that_child() {
    let mut brood = Brood::new("kill-pid")
        .opts(["-i"])
        .stdin_pipe()
        .script("lastwords")
        .start();
    brood.send("\n");
    brood.send("\n");
    brood.wait_stdout("2 ready", |s| s.matches("| ready").count() == 2);
    let pids = brood.wait_spawned(2);
    brood.send(&format!("k {}\n", pids[0]));
    brood.wait_events("exit of the stopped child", |ev| {
        events_of(ev, "exit")
            .iter()
            .any(|e| e["pid"].as_i64() == Some(pids[0] as i64))
    });
    assert!(!process_dead(pids[1]), "the other child must keep running");
    assert_eq!(events_of(&brood.events(), "exit").len(), 1);
    brood.close_stdin();
    brood.finish().assert_code(0);
}

#[test]
fn console_kill_unknown_target_changes_nothing() {
    let mut brood = Brood::new("kill-unknown")
        .opts(["-i"])
        .stdin_pipe()
        .script("lastwords")
        .start();
    brood.send("\n");
    brood.wait_stdout("ready", |s| s.contains("| ready"));
    let before = brood.stderr().len();
    brood.send("k nosuch.9\n");
    brood.wait_stderr("a complaint about the unknown child", |s| {
        s.len() > before && s[before..].contains("nosuch.9")
    });
    assert!(events_of(&brood.events(), "exit").is_empty());
    brood.close_stdin();
    brood.finish().assert_code(0).assert_no_panic();
}
