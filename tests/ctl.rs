//! `brood ctl` and the control socket of `brood run`: every verb against a
//! live brood (status, start, stop, restart, signal, scale, logs, shutdown),
//! the exit codes (0, 1 unknown target or refused, 2 usage, 3 no brood), the
//! socket's safety (mode 0600, peers of another uid refused, a stale socket
//! replaced, a live one "already running") and the protocol's robustness
//! (malformed JSON, an oversized line, a hundred clients, idle clients).
//!
//! Each test runs its own `brood run --socket SOCK --events EVENTS -f
//! brood.toml` in a temp dir, under the harness's watchdog and cleanup guard
//! (see `tests/util/mod.rs`), with short stop timeouts. `brood ctl` runs as
//! a separate process, also under a watchdog.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use util::*;

// ---------------------------------------------------------------------------
// Helpers

/// A long-running program that says `got HUP` on SIGHUP.
const WEB: &str = r#"
[program.web]
command = ["bash", "-c", "trap 'echo got HUP' HUP; echo ready; while :; do sleep 0.05; done"]
stop_timeout = "1s"
backoff = { initial = "50ms", max = "100ms" }
"#;

/// How long a `brood ctl` run may take.
const CTL_WATCHDOG: Duration = Duration::from_secs(15);

/// A live `brood run` with its control socket.
struct Server {
    brood: Running,
    sock: PathBuf,
    config: PathBuf,
}

impl Server {
    /// Starts `brood run` on `config` (written to brood.toml in a fresh
    /// temp dir) with `--socket` in that dir, and waits until it answers
    /// and every instance is running.
    fn start(name: &str, config: &str) -> Server {
        let brood = Brood::new(name);
        let sock = brood.dir().join("s.sock");
        let (brood, config_path) = run_brood(brood, config, Some(&sock));
        let server = Server {
            brood: brood.start(),
            sock,
            config: config_path,
        };
        server.wait_all_running();
        server
    }

    /// Waits until the socket answers and no instance is starting or
    /// without a pid.
    fn wait_all_running(&self) {
        let ok = try_wait_for(DEADLINE, || {
            try_request(&self.sock, &json!({"verb": "status"})).is_ok_and(|r| {
                r["programs"].as_array().is_some_and(|ps| {
                    !ps.is_empty() && ps.iter().all(|p| p["state"] == "running" && p["pid"].is_i64())
                })
            })
        });
        if !ok {
            panic!(
                "brood did not come up with every instance running at {}\n--- stdout:\n{}\n--- stderr:\n{}",
                self.sock.display(),
                self.brood.stdout_str(),
                self.brood.stderr_str()
            );
        }
    }

    /// `status` over the socket: the programs array.
    fn status(&self) -> Vec<Value> {
        let reply = request(&self.sock, &json!({"verb": "status"}));
        assert_eq!(reply["ok"], true, "status failed: {reply}");
        reply["programs"].as_array().cloned().unwrap_or_default()
    }

    /// The status entry of one label, if it is listed.
    fn entry(&self, label: &str) -> Option<Value> {
        self.status().into_iter().find(|p| p["label"] == label)
    }

    fn pid_of(&self, label: &str) -> i32 {
        let e = self
            .entry(label)
            .unwrap_or_else(|| panic!("{label} not in status"));
        e["pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("{label} has no pid: {e}")) as i32
    }

    /// Waits until `label`'s status entry satisfies `pred`.
    fn wait_entry(&self, label: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let ok = try_wait_for(DEADLINE, || self.entry(label).is_some_and(|e| pred(&e)));
        if !ok {
            panic!(
                "timed out waiting for {label}: {what}; status: {:?}\n--- stderr:\n{}",
                self.status(),
                self.brood.stderr_str()
            );
        }
        self.entry(label).unwrap()
    }

    /// `brood ctl --socket SOCK ARGS...`, run to the end.
    fn ctl(&self, args: &[&str]) -> Output {
        ctl_at(&self.sock, args)
    }

    /// Stops brood with SIGTERM and checks it ends cleanly (status 0).
    fn stop(self) -> Output {
        self.brood.signal(Signal::SIGTERM);
        let out = self.brood.finish();
        out.assert_code(0).assert_no_panic();
        out
    }
}

/// Writes `config` into `brood`'s dir and makes it `brood run --events E
/// [--socket SOCK] -f brood.toml`.
fn run_brood(brood: Brood, config: &str, sock: Option<&Path>) -> (Brood, PathBuf) {
    let config_path = brood.dir().join("brood.toml");
    std::fs::write(&config_path, config).expect("write brood.toml");
    let mut argv: Vec<std::ffi::OsString> = vec!["run".into(), "--events".into(), brood.events_path().into()];
    if let Some(sock) = sock {
        argv.extend(["--socket".into(), sock.into()]);
    }
    argv.extend(["-f".into(), config_path.clone().into()]);
    (brood.raw_args(argv), config_path)
}

/// `brood ctl --socket SOCK ARGS...`, run to the end.
fn ctl_at(sock: &Path, args: &[&str]) -> Output {
    let mut argv: Vec<std::ffi::OsString> = vec!["ctl".into(), "--socket".into(), sock.into()];
    argv.extend(args.iter().map(Into::into));
    Brood::new("ctl").raw_args(argv).watchdog(CTL_WATCHDOG).run()
}

/// One request over a fresh connection; the first answer line, parsed.
fn try_request(sock: &Path, req: &Value) -> Result<Value, String> {
    let mut stream = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream
        .write_all(format!("{req}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    read_reply(&mut BufReader::new(stream))
}

fn request(sock: &Path, req: &Value) -> Value {
    try_request(sock, req).unwrap_or_else(|e| panic!("request {req} to {}: {e}", sock.display()))
}

/// Reads one line and parses it as JSON.
fn read_reply(reader: &mut impl BufRead) -> Result<Value, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err("connection closed".into()),
        Ok(_) => serde_json::from_str(&line).map_err(|e| format!("not JSON ({e}): {line:?}")),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// A connection kept open for several requests.
struct Conn {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Conn {
    fn open(sock: &Path) -> Conn {
        let stream = UnixStream::connect(sock).expect("connect to brood");
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Conn {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to brood");
    }

    fn reply(&mut self) -> Value {
        read_reply(&mut self.reader).expect("an answer line")
    }
}

/// `(label, text)` of each `LABEL | text` line.
fn prefixed(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(split_prefixed)
        .map(|(l, t)| (l.to_owned(), t.to_owned()))
        .collect()
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn have(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------
// status

#[test]
fn status_json_reports_every_field() {
    let server = Server::start(
        "st-json",
        &format!(
            "{WEB}\n[program.pair]\ncommand = [\"sleep\", \"1000\"]\nnumprocs = 2\nstop_timeout = \"1s\"\n"
        ),
    );
    let out = server.ctl(&["status", "--json"]);
    out.assert_code(0).assert_no_panic();
    let v: Value = serde_json::from_str(out.stdout_str().trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}){}", out.context()));
    let programs = v["programs"]
        .as_array()
        .unwrap_or_else(|| panic!("no programs array{}", out.context()));
    let labels: Vec<&str> = programs.iter().filter_map(|p| p["label"].as_str()).collect();
    assert_eq!(labels.len(), 3, "{}", out.context());
    for want in ["web.1", "pair.1", "pair.2"] {
        assert!(labels.contains(&want), "{want} missing{}", out.context());
    }
    let spawned: Vec<i32> = events_of(&server.brood.events(), "spawn")
        .iter()
        .map(|e| e["pid"].as_i64().unwrap() as i32)
        .collect();
    for p in programs {
        let label = p["label"].as_str().unwrap();
        let name = label.split('.').next().unwrap();
        assert_eq!(p["name"], name, "{p}");
        let pid = p["pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("pid must be an int: {p}"));
        assert!(
            spawned.contains(&(pid as i32)),
            "pid {pid} of {label} is not a spawned pid"
        );
        assert_eq!(p["state"], "running", "{p}");
        assert!(p["uptime_ms"].is_u64(), "uptime_ms must be an int: {p}");
        assert_eq!(p["restarts"], 0, "{p}");
        assert!(p["last_exit"].is_null(), "{p}");
        let keys: Vec<&String> = p.as_object().unwrap().keys().collect();
        for k in [
            "label",
            "name",
            "pid",
            "state",
            "uptime_ms",
            "restarts",
            "last_exit",
        ] {
            assert!(keys.iter().any(|x| *x == k), "{k} missing in {p}");
        }
    }
    server.stop();
}

#[test]
fn status_json_after_a_stop_shows_null_pid_and_the_last_exit() {
    let server = Server::start("st-exit", WEB);
    server.ctl(&["stop", "web.1"]).assert_code(0);
    server.wait_entry("web.1", "stopped", |e| e["state"] == "stopped");
    let out = server.ctl(&["status", "--json"]);
    out.assert_code(0);
    let v: Value = serde_json::from_str(out.stdout_str().trim()).unwrap();
    let web = &v["programs"][0];
    assert_eq!(web["label"], "web.1", "{v}");
    assert!(web["pid"].is_null(), "{v}");
    assert!(web["uptime_ms"].is_null(), "{v}");
    assert_eq!(
        web["last_exit"],
        json!({"code": null, "signal": "SIGTERM"}),
        "{v}"
    );
    server.stop();
}

#[test]
fn status_table_lists_label_pid_and_state() {
    let server = Server::start("st-table", WEB);
    let pid = server.pid_of("web.1");
    let out = server.ctl(&["status"]);
    out.assert_code(0).assert_no_panic();
    let lines = out.stdout_lines();
    assert!(lines[0].starts_with("LABEL"), "{}", out.context());
    for col in ["PID", "STATE", "UPTIME", "RESTARTS", "LAST EXIT"] {
        assert!(lines[0].contains(col), "header lacks {col}{}", out.context());
    }
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &row[..3],
        &["web.1", &pid.to_string(), "running"],
        "{}",
        out.context()
    );
    server.stop();
}

// ---------------------------------------------------------------------------
// start, stop, restart, signal

#[test]
fn stop_keeps_an_instance_down_and_start_brings_it_back_with_a_new_pid() {
    let server = Server::start("stop-start", WEB);
    let old = server.pid_of("web.1");
    let out = server.ctl(&["stop", "web.1"]);
    out.assert_code(0).assert_no_panic();
    assert_eq!(out.stdout_str().trim(), "web.1", "{}", out.context());
    server.wait_entry("web.1", "state stopped", |e| {
        e["state"] == "stopped" && e["pid"].is_null()
    });
    wait_for(DEADLINE, "the old pid to die", || process_dead(old));
    // The backoff is 50ms: a policy restart would show within this window.
    assert!(
        holds_for(Duration::from_millis(400), || server
            .entry("web.1")
            .is_some_and(|e| e["state"] == "stopped")),
        "a stopped instance must stay down: {:?}",
        server.status()
    );
    assert_eq!(events_of(&server.brood.events(), "spawn").len(), 1);

    let out = server.ctl(&["start", "web.1"]);
    out.assert_code(0).assert_no_panic();
    assert_eq!(out.stdout_str().trim(), "web.1", "{}", out.context());
    let e = server.wait_entry("web.1", "running again", |e| {
        e["state"] == "running" && e["pid"].is_i64()
    });
    let new = e["pid"].as_i64().unwrap() as i32;
    assert_ne!(new, old, "start must spawn a new process");
    server.stop();
}

#[test]
fn restart_gives_a_new_pid() {
    let server = Server::start("restart", WEB);
    let old = server.pid_of("web.1");
    let out = server.ctl(&["restart", "web"]);
    out.assert_code(0).assert_no_panic();
    assert_eq!(out.stdout_str().trim(), "web.1", "{}", out.context());
    let e = server.wait_entry("web.1", "a new pid", |e| {
        e["state"] == "running" && e["pid"].as_i64().is_some_and(|p| p as i32 != old)
    });
    assert!(e["pid"].as_i64().unwrap() as i32 != old);
    wait_for(DEADLINE, "the old pid to die", || process_dead(old));
    server.stop();
}

#[test]
fn signal_hup_reaches_a_trapping_child() {
    let server = Server::start("signal", WEB);
    let pid = server.pid_of("web.1");
    server.brood.wait_stdout("web ready", |s| {
        prefixed(s).iter().any(|(l, t)| l == "web.1" && t == "ready")
    });
    let out = server.ctl(&["signal", "HUP", "web"]);
    out.assert_code(0).assert_no_panic();
    assert_eq!(out.stdout_str().trim(), "web.1", "{}", out.context());
    server.brood.wait_stdout("got HUP", |s| {
        prefixed(s).iter().any(|(l, t)| l == "web.1" && t == "got HUP")
    });
    assert_eq!(
        server.pid_of("web.1"),
        pid,
        "a trapped HUP must not restart the child"
    );
    server.stop();
}

#[test]
fn signal_accepts_the_sig_prefix_and_numbers() {
    let server = Server::start("signal-forms", WEB);
    // One at a time: two HUPs pending at once coalesce into one delivery.
    for (i, form) in ["SIGHUP", "1"].into_iter().enumerate() {
        server.ctl(&["signal", form, "web.1"]).assert_code(0);
        server.brood.wait_stdout("a HUP per signal", |s| {
            prefixed(s)
                .iter()
                .filter(|(l, t)| l == "web.1" && t == "got HUP")
                .count()
                > i
        });
    }
    server.brood.wait_stdout("two HUPs", |s| {
        prefixed(s)
            .iter()
            .filter(|(l, t)| l == "web.1" && t == "got HUP")
            .count()
            >= 2
    });
    server.stop();
}

// ---------------------------------------------------------------------------
// scale

#[test]
fn scale_up_adds_instances_and_scale_down_removes_them() {
    let server = Server::start("scale", WEB);
    let out = server.ctl(&["scale", "web=3"]);
    out.assert_code(0).assert_no_panic();
    for label in ["web.2", "web.3"] {
        server.wait_entry(label, "running", |e| e["state"] == "running" && e["pid"].is_i64());
    }
    let first = server.pid_of("web.1");
    let extra = [server.pid_of("web.2"), server.pid_of("web.3")];

    let out = server.ctl(&["scale", "web=1"]);
    out.assert_code(0).assert_no_panic();
    let gone = try_wait_for(DEADLINE, || {
        let labels: Vec<String> = server
            .status()
            .iter()
            .filter_map(|p| p["label"].as_str().map(str::to_owned))
            .collect();
        labels == ["web.1"]
    });
    assert!(
        gone,
        "web.2 and web.3 must leave the status: {:?}",
        server.status()
    );
    for pid in extra {
        wait_for(DEADLINE, "a scaled-down instance to die", || process_dead(pid));
    }
    assert_eq!(server.pid_of("web.1"), first, "scaling down must keep web.1");
    server.stop();
}

// ---------------------------------------------------------------------------
// logs

#[test]
fn logs_n_gives_the_last_lines() {
    let config = r#"
[program.lines]
shell = "for i in 1 2 3 4 5; do echo line $i; done; exec sleep 1000"
stop_timeout = "1s"
"#;
    let server = Server::start("logs-n", config);
    server.brood.wait_stdout("line 5", |s| {
        prefixed(s).iter().any(|(l, t)| l == "lines.1" && t == "line 5")
    });
    for target in ["lines", "lines.1"] {
        let out = server.ctl(&["logs", "-n", "2", target]);
        out.assert_code(0).assert_no_panic();
        assert_eq!(
            out.stdout_str(),
            "lines.1 | line 4\nlines.1 | line 5\n",
            "logs -n 2 {target}{}",
            out.context()
        );
    }
    server.stop();
}

/// Large writes that cut lines anywhere: the lines a read holds whole go to
/// the sink and the ring as a block, the ones split across reads one by one;
/// both must come out whole and in order, on stdout and in `ctl logs`.
#[test]
fn logs_keep_every_line_of_large_writes_that_split_lines() {
    let config = r#"
[program.big]
command = ["python3", "-c", """
import os, sys
data = b"".join(b"line %05d %s\\n" % (i, b"x" * (i % 97)) for i in range(5000))
for at in range(0, len(data), 4093):
    os.write(1, data[at:at + 4093])
os.close(1)
import time; time.sleep(1000)
"""]
stop_timeout = "1s"
"#;
    let expected: Vec<String> = (0..5000)
        .map(|i| format!("line {i:05} {}", "x".repeat(i % 97)))
        .collect();
    let server = Server::start("logs-split", config);
    server.brood.wait_stdout("the last line", |s| {
        prefixed(s)
            .iter()
            .any(|(l, t)| l == "big.1" && t.starts_with("line 04999"))
    });
    let seen: Vec<String> = prefixed(&server.brood.stdout_str())
        .into_iter()
        .filter(|(l, _)| l == "big.1")
        .map(|(_, t)| t)
        .collect();
    assert!(seen == expected, "stdout must carry every line whole, in order");
    let out = server.ctl(&["logs", "-n", "1000", "big"]);
    out.assert_code(0).assert_no_panic();
    let logged: Vec<String> = prefixed(&out.stdout_str()).into_iter().map(|(_, t)| t).collect();
    assert!(
        logged == expected[4000..],
        "ctl logs -n 1000 must be the last 1000 lines, whole, in order{}",
        out.context()
    );
    server.stop();
}

#[test]
fn logs_follow_streams_new_lines() {
    let config = r#"
[program.ticker]
shell = "i=0; while :; do i=$((i + 1)); echo tick $i; sleep 0.1; done"
stop_timeout = "1s"
"#;
    let server = Server::start("logs-f", config);
    let mut argv: Vec<std::ffi::OsString> = vec!["ctl".into(), "--socket".into(), server.sock.clone().into()];
    argv.extend(["logs", "-n", "0", "-f", "ticker"].map(Into::into));
    let follower = Brood::new("follow").raw_args(argv).watchdog(CTL_WATCHDOG).start();
    let ticks = |s: &str| -> Vec<u64> {
        prefixed(s)
            .iter()
            .filter(|(l, _)| l == "ticker.1")
            .filter_map(|(_, t)| t.strip_prefix("tick ").and_then(|n| n.parse().ok()))
            .collect()
    };
    follower.wait_stdout("three new ticks", |s| ticks(s).len() >= 3);
    let seen = ticks(&follower.stdout_str());
    assert!(
        seen.windows(2).all(|w| w[1] == w[0] + 1),
        "follow must stream every new line in order: {seen:?}"
    );
    // The ctl client is killed when done; brood must not mind.
    follower.signal(Signal::SIGKILL);
    let out = follower.finish();
    assert_eq!(out.status.code(), None, "{}", out.context());
    assert!(server.status().len() == 1, "brood must still answer");
    server.stop();
}

// ---------------------------------------------------------------------------
// shutdown

#[test]
fn shutdown_ends_brood_with_status_0() {
    let server = Server::start("shutdown", WEB);
    let pid = server.pid_of("web.1");
    let out = server.ctl(&["shutdown"]);
    out.assert_code(0).assert_no_panic();
    let brood_out = server.brood.finish();
    brood_out.assert_code(0).assert_no_panic();
    let shutdown = brood_out.events_of("shutdown");
    assert_eq!(shutdown.len(), 1, "{}", brood_out.context());
    assert_eq!(shutdown[0]["reason"], "ctl", "{}", brood_out.context());
    assert!(process_dead(pid), "{}", brood_out.context());
    assert!(
        !server.sock.exists(),
        "the socket file must be removed when brood exits{}",
        brood_out.context()
    );
}

// ---------------------------------------------------------------------------
// Exit codes

#[test]
fn unknown_target_exits_1() {
    let server = Server::start("unknown", WEB);
    for verb in ["start", "stop", "restart"] {
        let out = server.ctl(&[verb, "nope"]);
        out.assert_code(1)
            .assert_no_panic()
            .assert_stderr_contains("no program or instance 'nope'");
    }
    server
        .ctl(&["signal", "HUP", "web.9"])
        .assert_code(1)
        .assert_stderr_contains("web.9");
    server.ctl(&["logs", "nope"]).assert_code(1);
    server.ctl(&["scale", "nope=2"]).assert_code(1);
    assert_eq!(server.status().len(), 1);
    server.stop();
}

#[test]
fn usage_errors_exit_2_before_connecting() {
    // No brood here: reaching the socket would give 3, not 2.
    let dir = TempDir::new("usage");
    let sock = dir.join("none.sock");
    let cases: &[&[&str]] = &[
        &["frobnicate"],
        &[],
        &["stop"],
        &["scale", "web"],
        &["scale", "web=x"],
        &["scale", "web=-1"],
        &["signal", "NOPE", "web"],
        &["logs", "-n", "many", "web"],
        &["status", "--bogus"],
    ];
    for args in cases {
        let out = ctl_at(&sock, args);
        out.assert_no_panic();
        assert_eq!(
            out.code(),
            Some(2),
            "brood ctl {args:?} is a usage error{}",
            out.context()
        );
        assert!(
            !out.stderr_str().is_empty(),
            "a usage error must say why{}",
            out.context()
        );
    }
}

#[test]
fn no_brood_at_the_socket_exits_3() {
    let dir = TempDir::new("nobrood");
    let out = ctl_at(&dir.join("missing.sock"), &["status"]);
    out.assert_code(3).assert_no_panic();
    // A socket file that nobody listens on.
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let out = ctl_at(&stale, &["status", "--json"]);
    out.assert_code(3).assert_no_panic();
    assert!(out.stdout_str().is_empty(), "{}", out.context());
}

#[test]
fn ctl_f_config_finds_the_socket_beside_the_config() {
    let brood = Brood::new("beside");
    let (brood, config) = run_brood(brood, WEB, None);
    let brood = brood.start();
    let sock = config.parent().unwrap().join(".brood.sock");
    wait_for(DEADLINE, "the default socket", || {
        try_request(&sock, &json!({"verb": "status"})).is_ok()
    });
    let mut argv: Vec<std::ffi::OsString> = vec!["ctl".into(), "-f".into(), config.clone().into()];
    argv.extend(["status", "--json"].map(Into::into));
    let out = Brood::new("ctl").raw_args(argv).watchdog(CTL_WATCHDOG).run();
    out.assert_code(0).assert_no_panic();
    assert!(out.stdout_str().contains("\"web.1\""), "{}", out.context());
    brood.signal(Signal::SIGTERM);
    brood.finish().assert_code(0);
    assert!(!sock.exists());
}

// ---------------------------------------------------------------------------
// The socket's safety

#[test]
fn socket_is_mode_0600() {
    let server = Server::start("mode", WEB);
    let meta = std::fs::symlink_metadata(&server.sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "socket mode");
    server.stop();
}

/// The uid-65534 tests switch uid with setpriv, so they need root (as
/// `make test` has in CI, and as tests/reliability.rs needs too). They fail
/// saying so rather than pass without running.
fn require_root_and_setpriv() {
    assert!(
        is_root() && have("setpriv"),
        "this test switches to uid 65534: it needs root and setpriv (root: {}, setpriv: {})",
        is_root(),
        have("setpriv")
    );
}

/// Opens the socket to everyone (mode 0666), as an admin might by mistake:
/// the uid check must still refuse strangers.
fn open_to_everyone(server: &Server) {
    std::fs::set_permissions(&server.sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let dir = server.sock.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs `bash -c SCRIPT` as uid/gid 65534 (`$BROOD` is the binary).
fn as_nobody(script: &str) -> Output {
    Brood::new("nobody")
        .shell(&format!(
            "exec setpriv --reuid=65534 --regid=65534 --clear-groups {script}"
        ))
        .watchdog(CTL_WATCHDOG)
        .run()
}

#[test]
fn peer_with_another_uid_gets_a_refusal_line_and_is_closed() {
    require_root_and_setpriv();
    if !Path::new("/usr/bin/python3").exists() {
        panic!("this test needs /usr/bin/python3 (a raw socket client runnable by uid 65534)");
    }
    let server = Server::start("refused-raw", WEB);
    open_to_everyone(&server);
    // A raw client: reads what brood says (without writing), up to EOF.
    let client = format!(
        "/usr/bin/python3 -c 'import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ns.settimeout(5)\nb=b\"\"\nwhile True:\n    d=s.recv(4096)\n    if not d: break\n    b+=d\nsys.stdout.write(b.decode())' '{}'",
        server.sock.display()
    );
    let out = as_nobody(&client);
    out.assert_code(0);
    let lines = out.stdout_lines();
    assert_eq!(
        lines.len(),
        1,
        "one refusal line, then the close{}",
        out.context()
    );
    let v: Value =
        serde_json::from_str(&lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}){}", out.context()));
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("refused: uid 65534"),
        "{v}"
    );
    assert_eq!(server.status().len(), 1, "brood must still serve its own uid");
    server.stop();
}

#[test]
fn ctl_as_a_peer_with_another_uid_exits_1_refused() {
    require_root_and_setpriv();
    let server = Server::start("refused", WEB);
    open_to_everyone(&server);
    let sock = server.sock.to_str().unwrap().to_owned();
    // Several tries: the outcome depends on a race between brood's close
    // and ctl's write.
    for _ in 0..30 {
        let out = as_nobody(&format!("\"$BROOD\" ctl --socket '{sock}' status"));
        out.assert_no_panic();
        assert_eq!(
            out.code(),
            Some(1),
            "a peer of another uid must be refused{}",
            out.context()
        );
        out.assert_stderr_contains("refused");
        assert!(
            out.stdout_str().is_empty(),
            "a refused peer must learn nothing{}",
            out.context()
        );
    }
    assert_eq!(server.status().len(), 1, "brood must still serve its own uid");
    server.stop();
}

#[test]
fn stale_socket_is_replaced_and_brood_starts() {
    let brood = Brood::new("stale");
    let sock = brood.dir().join("s.sock");
    drop(UnixListener::bind(&sock).expect("bind a socket to leave stale"));
    assert!(sock.exists());
    let (brood, _) = run_brood(brood, WEB, Some(&sock));
    let server = Server {
        brood: brood.start(),
        sock,
        config: PathBuf::new(),
    };
    server.wait_all_running();
    let meta = std::fs::symlink_metadata(&server.sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    server.ctl(&["status"]).assert_code(0);
    server.stop();
}

#[test]
fn second_brood_on_a_live_socket_fails_with_already_running() {
    let server = Server::start("live", WEB);
    let pid = server.pid_of("web.1");
    let second = Brood::new("second");
    let second_events = second.events_path();
    let mut argv: Vec<std::ffi::OsString> = vec!["run".into(), "--events".into(), second_events.into()];
    argv.extend([
        "--socket".into(),
        server.sock.clone().into(),
        "-f".into(),
        server.config.clone().into(),
    ]);
    let out = second.raw_args(argv).watchdog(Duration::from_secs(15)).run();
    out.assert_code(2)
        .assert_no_panic()
        .assert_stderr_contains("already running");
    assert!(
        out.events_text.lines().all(|l| !l.contains("\"spawn\"")),
        "the second brood must start nothing{}",
        out.context()
    );
    assert!(
        server.sock.exists(),
        "the second brood must leave the live socket alone"
    );
    assert_eq!(server.pid_of("web.1"), pid, "the first brood keeps running");
    server.ctl(&["status"]).assert_code(0);
    server.stop();
}

// ---------------------------------------------------------------------------
// Protocol robustness

#[test]
fn malformed_json_gets_an_error_and_the_connection_stays_usable() {
    let server = Server::start("malformed", WEB);
    let mut conn = Conn::open(&server.sock);
    for bad in [
        &b"not json\n"[..],
        b"{\"verb\":\n",
        b"[1,2,3]\n",
        b"{\"verb\":\"fly\"}\n",
        b"{\"verb\":\"stop\"}\n",
        b"{\"verb\":\"scale\",\"name\":\"web\",\"count\":-1}\n",
        b"\xff\xfe\n",
    ] {
        conn.send_raw(bad);
        let reply = conn.reply();
        assert_eq!(
            reply["ok"],
            false,
            "{:?} must be refused: {reply}",
            String::from_utf8_lossy(bad)
        );
        assert!(reply["error"].is_string(), "{reply}");
    }
    conn.send_raw(b"{\"verb\":\"fly\"}\n");
    assert!(conn.reply()["error"].as_str().unwrap().contains("unknown verb"));
    conn.send_raw(b"{\"verb\":\"status\"}\n");
    let reply = conn.reply();
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["programs"][0]["label"], "web.1", "{reply}");
    drop(conn);
    server.ctl(&["status"]).assert_code(0);
    server.stop();
}

#[test]
fn request_line_over_64k_gets_an_error_and_the_connection_is_closed() {
    let mut server = Server::start("huge", WEB);
    let stream = UnixStream::connect(&server.sock).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    // Brood may close before it has read it all: write from a thread.
    let w = thread::spawn(move || {
        let huge = vec![b'x'; 80 * 1024];
        let _ = writer.write_all(&huge);
        let _ = writer.write_all(b"\n{\"verb\":\"status\"}\n");
    });
    let mut reader = BufReader::new(stream);
    let reply = read_reply(&mut reader).expect("an error line before the close");
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"].as_str().unwrap_or("").contains("too long"),
        "{reply}"
    );
    let mut rest = Vec::new();
    match reader.read_to_end(&mut rest) {
        Ok(_) => assert!(
            rest.is_empty(),
            "no answer after the error: {:?}",
            String::from_utf8_lossy(&rest)
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    w.join().unwrap();
    assert!(server.brood.is_running(), "brood must survive a huge line");
    assert_eq!(server.status().len(), 1);
    server.stop();
}

#[test]
fn a_hundred_clients_at_once_do_not_stall_brood() {
    let mut server = Server::start("hundred", WEB);
    let barrier = Arc::new(Barrier::new(100));
    let started = Instant::now();
    let handles: Vec<_> = (0..100)
        .map(|_| {
            let sock = server.sock.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                try_request(&sock, &json!({"verb": "status"}))
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for h in handles {
        match h.join().unwrap() {
            Ok(r) if r["ok"] == true => ok += 1,
            Ok(r) => {
                assert!(
                    r["error"].as_str().unwrap_or("").contains("too many clients"),
                    "{r}"
                );
                refused += 1;
            }
            // Refused clients may see the close before the line.
            Err(e) if e.contains("reset") || e.contains("closed") => refused += 1,
            Err(e) => panic!("a client got neither an answer nor a refusal: {e}"),
        }
    }
    assert!(ok >= 1, "some clients must be served (refused {refused})");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a hundred clients took {:?}",
        started.elapsed()
    );
    assert!(server.brood.is_running());
    let t = Instant::now();
    server.ctl(&["status"]).assert_code(0);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "status took {:?}",
        t.elapsed()
    );
    server.stop();
}

#[test]
fn idle_clients_do_not_stall_brood() {
    let server = Server::start("idle", WEB);
    // One that never writes, one that stops halfway through a line.
    let silent = UnixStream::connect(&server.sock).unwrap();
    let mut half = UnixStream::connect(&server.sock).unwrap();
    half.write_all(b"{\"verb\":\"sta").unwrap();
    let t = Instant::now();
    let out = server.ctl(&["status", "--json"]);
    out.assert_code(0);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "status took {:?} with idle clients{}",
        t.elapsed(),
        out.context()
    );
    // The other verbs too.
    server.ctl(&["signal", "HUP", "web"]).assert_code(0);
    server
        .brood
        .wait_stdout("got HUP", |s| prefixed(s).iter().any(|(_, t)| t == "got HUP"));
    drop(silent);
    drop(half);
    server.stop();
}

// ---------------------------------------------------------------------------
// Issue 10: a client that cannot hang, refusals named, bounds checked on the
// client, duplicate keys, large answers, and a socket that falls back

/// SIGCONTs a stopped brood on drop, so that a failing test leaves nothing
/// stopped behind.
struct ContOnDrop(i32);

impl Drop for ContOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

#[test]
fn ctl_gives_up_on_a_stopped_brood_with_exit_3() {
    let server = Server::start("stopped", WEB);
    let _cont = ContOnDrop(server.brood.pid());
    server.brood.signal(Signal::SIGSTOP);
    wait_for(DEADLINE, "brood stopped", || {
        proc_state(server.brood.pid()) == Some('T')
    });
    let t = Instant::now();
    let out = server.ctl(&["--timeout", "500ms", "status"]);
    out.assert_code(3).assert_no_panic();
    out.assert_stderr_contains("did not answer within 0.5s");
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    // The default timeout is bounded too.
    let t = Instant::now();
    let out = server.ctl(&["logs", "-f", "web"]);
    out.assert_code(3).assert_no_panic();
    assert!(t.elapsed() < Duration::from_secs(12), "took {:?}", t.elapsed());
    server.brood.signal(Signal::SIGCONT);
    server.ctl(&["status"]).assert_code(0);
    server.stop();
}

#[test]
fn ctl_gives_up_when_the_backlog_is_full() {
    let dir = TempDir::new("backlog");
    let sock = dir.join("full.sock");
    // A listener that never accepts, with a backlog of one connection,
    // taken by `_queued`: the next connect waits in the kernel.
    let listener = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(listener >= 0);
    let _owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(listener) };
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(sock.to_str().unwrap().bytes()) {
        *d = s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    assert_eq!(
        unsafe { libc::bind(listener, &addr as *const _ as *const libc::sockaddr, len) },
        0
    );
    assert_eq!(unsafe { libc::listen(listener, 0) }, 0);
    let mut queued = Vec::new();
    // Fill the backlog (its exact depth is the kernel's business).
    loop {
        let s = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        assert!(s >= 0);
        let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(s) };
        let r = unsafe { libc::connect(s, &addr as *const _ as *const libc::sockaddr, len) };
        if r != 0 {
            break;
        }
        queued.push(owned);
        assert!(queued.len() < 1000, "the backlog never filled");
    }
    let t = Instant::now();
    let out = ctl_at(&sock, &["--timeout", "300ms", "status"]);
    out.assert_code(3).assert_no_panic();
    out.assert_stderr_contains("did not accept the connection within 0.3s");
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
}

#[test]
fn ctl_as_another_uid_on_the_0600_socket_is_refused_with_exit_1() {
    require_root_and_setpriv();
    let server = Server::start("eacces", WEB);
    // The directory may be searched; the socket itself stays 0600.
    let dir = server.sock.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = server.sock.to_str().unwrap().to_owned();
    let out = as_nobody(&format!("\"$BROOD\" ctl --socket '{sock}' status"));
    out.assert_code(1).assert_no_panic();
    out.assert_stderr_contains("refused: permission denied");
    out.assert_stderr_contains("owned by uid 0");
    assert!(out.stdout_str().is_empty(), "{}", out.context());
    server.stop();
}

#[test]
fn scale_out_of_range_is_a_usage_error_whichever_side() {
    let dir = TempDir::new("scale-bounds");
    let sock = dir.join("none.sock");
    for spec in ["web=10001", "web=-1", "web=99999999999", "web=x", "=3"] {
        let out = ctl_at(&sock, &["scale", spec]);
        out.assert_code(2).assert_no_panic();
        out.assert_stderr_contains("from 0 to 10000");
    }
}

#[test]
fn request_with_a_duplicate_key_is_refused_not_the_last_one_taken() {
    let mut server = Server::start("dupkeys", WEB);
    let mut conn = Conn::open(&server.sock);
    conn.send_raw(b"{\"verb\":\"status\",\"verb\":\"shutdown\"}\n");
    let reply = conn.reply();
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or("")
            .contains("duplicate field `verb`"),
        "{reply}"
    );
    conn.send_raw(b"{\"verb\":\"stop\",\"target\":\"nope\",\"target\":\"web\"}\n");
    let reply = conn.reply();
    assert_eq!(reply["ok"], false, "{reply}");
    // Still up, web still running: neither request was acted on.
    server.wait_entry("web.1", "running", |e| e["state"] == "running");
    assert!(server.brood.is_running());
    server.stop();
}

#[test]
fn ctl_reads_an_answer_line_over_1_mib_whole() {
    let dir = TempDir::new("bigline");
    let sock = dir.join("fake.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let lines: Vec<Value> = (0..3000)
        .map(|i| json!({"label": "a.1", "stream": "stdout", "line": format!("{i:04}{}", "x".repeat(1000))}))
        .collect();
    let answer = format!("{}\n", json!({"ok": true, "lines": lines}));
    assert!(answer.len() > 2 << 20);
    let server = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request = String::new();
        reader.read_line(&mut request).unwrap();
        (&stream).write_all(answer.as_bytes()).unwrap();
        request
    });
    let out = ctl_at(&sock, &["logs", "-n", "3000", "a"]);
    out.assert_code(0).assert_no_panic();
    let request: Value = serde_json::from_str(&server.join().unwrap()).unwrap();
    assert_eq!(
        request,
        json!({"verb": "logs", "target": "a", "lines": 3000, "follow": false})
    );
    let got = out.stdout_lines();
    assert_eq!(got.len(), 3000, "every line of the answer");
    assert!(got[2999].starts_with("a.1 | 2999x"), "{}", got[2999]);
}

/// `brood ctl ARGS...` with `XDG_RUNTIME_DIR=xdg`.
fn ctl_with_runtime_dir(xdg: &Path, args: &[&std::ffi::OsStr]) -> Output {
    Brood::new("ctl")
        .raw_args(std::iter::once(std::ffi::OsStr::new("ctl")).chain(args.iter().copied()))
        .env("XDG_RUNTIME_DIR", xdg)
        .watchdog(CTL_WATCHDOG)
        .run()
}

/// The `brood-*.sock` sockets in `dir`.
fn fallback_sockets(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("brood-") && n.ends_with(".sock"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn socket_path_too_long_falls_back_to_the_runtime_dir_and_ctl_f_finds_it() {
    let brood = Brood::new("longpath");
    let xdg = TempDir::new("longpath-xdg");
    std::fs::set_permissions(xdg.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let deep = brood.dir().join("d".repeat(120));
    std::fs::create_dir(&deep).unwrap();
    let config = deep.join("brood.toml");
    std::fs::write(&config, WEB).unwrap();
    let events = brood.events_path();
    let brood = brood
        .raw_args([
            std::ffi::OsStr::new("run"),
            "--events".as_ref(),
            events.as_os_str(),
            "-f".as_ref(),
            config.as_os_str(),
        ])
        .env("XDG_RUNTIME_DIR", xdg.path())
        .start();
    brood.wait_spawned(1);
    wait_for(DEADLINE, "a socket in the runtime dir", || {
        !fallback_sockets(xdg.path()).is_empty()
    });
    brood.wait_stderr("the fallback named once", |s| {
        s.contains("warning: control socket at")
    });
    let out = ctl_with_runtime_dir(
        xdg.path(),
        &[
            "-f".as_ref(),
            config.as_os_str(),
            "status".as_ref(),
            "--json".as_ref(),
        ],
    );
    out.assert_code(0).assert_no_panic();
    assert!(out.stdout_str().contains("\"web.1\""), "{}", out.context());
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        out.stderr_str().matches("warning: control socket").count(),
        1,
        "{}",
        out.context()
    );
    assert!(
        fallback_sockets(xdg.path()).is_empty(),
        "the socket is removed at exit"
    );
}

#[test]
fn read_only_config_dir_falls_back_to_the_runtime_dir() {
    require_root_and_setpriv();
    // A directory of root's that uid 65534 can read but not write.
    let b = Brood::new("rodir");
    std::fs::set_permissions(b.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(b.dir().join("brood.toml"), WEB).unwrap();
    let xdg = TempDir::new("rodir-xdg");
    std::fs::set_permissions(xdg.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(xdg.path(), Some(65534.into()), Some(65534.into())).unwrap();
    let as_nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups";
    let x = xdg.path().to_str().unwrap();
    let brood = b
        .shell(&format!(
            "exec {as_nobody} env XDG_RUNTIME_DIR='{x}' \"$BROOD\" run -f brood.toml"
        ))
        .start();
    wait_for(DEADLINE, "a socket in the runtime dir", || {
        !fallback_sockets(xdg.path()).is_empty()
    });
    let out = Brood::new("ctl-rodir")
        .shell(&format!(
            "exec {as_nobody} env XDG_RUNTIME_DIR='{x}' \"$BROOD\" ctl -f '{}' status --json",
            brood.dir().join("brood.toml").display()
        ))
        .watchdog(CTL_WATCHDOG)
        .run();
    out.assert_code(0).assert_no_panic();
    assert!(out.stdout_str().contains("\"web.1\""), "{}", out.context());
    assert!(!brood.dir().join(".brood.sock").exists());
    brood.signal(Signal::SIGTERM);
    brood.finish().assert_code(0).assert_no_panic();
}

#[test]
fn no_place_for_a_socket_warns_and_supervises_anyway() {
    let brood = Brood::new("nosock");
    let (brood, _) = run_brood(brood, WEB, Some(Path::new("/dev/null/brood.sock")));
    let brood = brood.start();
    brood.wait_stdout("web is up", |s| s.contains("web.1 | ready"));
    brood.wait_stderr("the warning", |s| s.contains("running without a control socket"));
    brood.signal(Signal::SIGTERM);
    brood.finish().assert_code(0).assert_no_panic();
}
