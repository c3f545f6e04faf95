//! `brood ctl events` (SPEC 19): the kept events, then live ones with -f,
//! each with its `seq`, with no gap and no duplicate at the boundary.

mod util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use util::*;

const CRASHER: &str = r#"
[program.crash]
shell = "sleep 0.2; exit 1"
backoff = { initial = "50ms", max = "100ms" }
max_restarts = 100

[program.web]
shell = "exec sleep 30"
"#;

#[test]
fn events_follow_across_restarts_with_consecutive_seq_and_match_the_file() {
    let brood = start_toml("events-follow", CRASHER);
    brood.wait_events("a first restart", |e| !events_of(e, "restart").is_empty());
    let mut child = Command::new(brood_bin())
        .arg("ctl")
        .arg("--socket")
        .arg(brood.dir().join(".brood.sock"))
        .args(["events", "-f"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn ctl events -f");
    let guard_pid = child.id() as i32;
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Read through at least three more restarts (live events).
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        seen.push(serde_json::from_str(&line).expect("each line is one JSON event"));
        if events_of(&seen, "restart").len() >= 4 {
            break;
        }
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(guard_pid), Signal::SIGTERM);
    let _ = child.wait();
    assert!(events_of(&seen, "restart").len() >= 4, "too few events: {seen:?}");
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs[0], 1, "the kept events start at the first");
    for pair in seqs.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a gap or a duplicate: {seqs:?}");
    }
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    // The --events file has the same objects with the same seq.
    let file = out.events();
    for e in &seen {
        let n = e["seq"].as_u64().unwrap();
        let same = file
            .iter()
            .find(|f| f["seq"].as_u64() == Some(n))
            .expect("in the file");
        assert_eq!(same, e);
    }
}

#[test]
fn events_since_returns_only_later_events() {
    let brood = start_toml("events-since", CRASHER);
    brood.wait_events("two restarts", |e| events_of(e, "restart").len() >= 2);
    let out = ctl_of(&brood, &["events", "--since", "3"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let seqs: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.first(), Some(&3), "{text}");
    assert!(seqs.windows(2).all(|p| p[1] == p[0] + 1), "{text}");
    brood.signal(Signal::SIGTERM);
    brood.finish();
}
