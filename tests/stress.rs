//! The slow half of the fault-injection suite (issue 5): each test runs for
//! about ten seconds or more, so `make test` skips them. Run them with
//! `make test-stress` (`cargo test --release --test stress -- --ignored`).

mod util;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use util::*;

/// Pids of live (non-zombie) processes whose argv[1] is `token`.
fn live_with_arg(token: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for pid in all_pids() {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline.split(|&b| b == 0).nth(1) == Some(token.as_bytes()) && !process_dead(pid) {
            out.push(pid);
        }
    }
    out
}

// ---------------------------------------------------------------------------

#[test]
#[ignore = "stress: make test-stress"]
fn stress_reaping_storm_2000_children_released_at_the_same_instant() {
    let b = Brood::new("storm-fifo");
    let fifo = b.dir().join("gate");
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).expect("mkfifo");
    // Our read-write end keeps the gate shut: every child opens it at once
    // and blocks in read; closing our end releases all 2000 together.
    let gate = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("open gate");
    let brood = b
        .opts(["-n", "2000", "-j", "2000", "-q", "--no-prefix"])
        .prog("sh")
        .args([
            OsStr::new("-c"),
            OsStr::new("exec 3<\"$0\"; echo r; read x <&3; exit 0"),
            fifo.as_os_str(),
        ])
        .watchdog(Duration::from_secs(120))
        .start();
    let ok = try_wait_for(Duration::from_secs(90), || {
        brood.stdout_str().matches("r\n").count() >= 2000
    });
    assert!(
        ok,
        "only {} children reached the gate",
        brood.stdout_str().matches("r\n").count()
    );
    assert!(events_of(&brood.events(), "exit").is_empty());
    let released = Instant::now();
    drop(gate);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let s = assert_counts_exact(&out);
    assert_eq!(count(&s, "spawned"), 2000);
    assert_eq!(count(&s, "succeeded"), 2000);
    assert!(
        released.elapsed() < Duration::from_secs(20),
        "reaping 2000 took {:?}",
        released.elapsed()
    );
}

#[test]
#[ignore = "stress: make test-stress"]
fn stress_orphan_storm_2000_orphans_in_init_mode_are_all_reaped() {
    let b = Brood::new("orphans-init-2000");
    let done = b.dir().join("done");
    // Ten waves of 200 orphans, each made by a subshell that exits at once.
    let script = "w=0; while [ $w -lt 10 ]; do \
                    (i=0; while [ $i -lt 200 ]; do sleep 0.1 </dev/null >/dev/null 2>&1 & i=$((i+1)); done); \
                    w=$((w+1)); done; \
                  echo made >\"$0.made\"; while [ ! -e \"$0\" ]; do sleep 0.05; done";
    let brood = b
        .raw_args([
            OsStr::new("init"),
            OsStr::new("--"),
            OsStr::new("sh"),
            OsStr::new("-c"),
            OsStr::new(script),
            done.as_os_str(),
        ])
        .watchdog(Duration::from_secs(90))
        .start();
    let made = done.with_extension("made");
    wait_for(Duration::from_secs(60), "all waves made", || made.exists());
    let bpid = brood.pid();
    let ok = try_wait_for(Duration::from_secs(20), || {
        let kids = children_of(bpid);
        kids.len() == 1 && kids[0].1 != 'Z'
    });
    assert!(ok, "orphans left unreaped: {} children", children_of(bpid).len());
    std::fs::write(&done, "").unwrap();
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
}

/// `flood.N | N SEQ ooo...` lines: per counter, the sequence numbers seen,
/// checking each whole line's content; a child's last line may be cut
/// (the child was killed between its two writes).
fn check_flood_output(stdout: &[u8]) -> BTreeMap<String, u64> {
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut cut: HashSet<String> = HashSet::new();
    for line in stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = std::str::from_utf8(line).expect("flood output is ASCII");
        let (label, rest) = split_prefixed(line).unwrap_or_else(|| panic!("unprefixed {line:?}"));
        assert!(!cut.contains(label), "{label}: a line after a cut line: {line:?}");
        let mut words = rest.split(' ');
        let tag = words.next().unwrap();
        assert_eq!(format!("flood.{tag}"), label, "{line:?}");
        let seq: u64 = words
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{line:?}"));
        let expect_seq = last.get(label).copied().unwrap_or(0) + 1;
        assert_eq!(seq, expect_seq, "{label}: lost or repeated lines before {line:?}");
        let pad = words.next().unwrap_or("");
        let full = "o".repeat(10 + (seq % 90) as usize);
        if pad != full {
            assert!(full.starts_with(pad), "{label}: mangled line {line:?}");
            cut.insert(label.to_owned());
        }
        last.insert(label.to_owned(), seq);
    }
    last
}

#[test]
#[ignore = "stress: make test-stress"]
fn stress_stalled_reader_bounded_memory_sigterm_works_nothing_lost() {
    // 4 children that would write ~100 MB each; nobody reads for 10 s.
    let brood = Brood::new("stall-100mb")
        .opts(["-n", "4", "-j", "4", "--grace", "5s"])
        .script("flood")
        .args(["1600000"])
        .stdout_paused()
        .watchdog(Duration::from_secs(120))
        .start();
    let pids = brood.wait_spawned(4);
    let stall = Instant::now();
    let mut max_rss = 0;
    while stall.elapsed() < Duration::from_secs(10) {
        if let Some(rss) = rss_kib(brood.pid()) {
            max_rss = max_rss.max(rss);
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        max_rss < 64 * 1024,
        "brood RSS reached {max_rss} KiB with a stalled reader"
    );
    // Signals are still handled: SIGTERM stops the children within the
    // grace although brood cannot write a byte.
    brood.signal(Signal::SIGTERM);
    let dead = try_wait_for(Duration::from_secs(6), || pids.iter().all(|&p| process_dead(p)));
    assert!(
        dead,
        "children not stopped within the grace while stdout is stalled"
    );
    let reaped = try_wait_for(Duration::from_secs(2), || {
        children_of(brood.pid()).iter().all(|&(_, s)| s != 'Z')
    });
    assert!(
        reaped,
        "zombies under a stalled brood: {:?}",
        children_of(brood.pid())
    );
    brood.resume_stdout();
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let per_child = check_flood_output(&out.stdout);
    assert_eq!(per_child.len(), 4, "{:?}", per_child);
    let s = assert_counts_exact(&out);
    assert_eq!(count(&s, "stopped"), 4, "{}", out.context());
    for e in out.events_of("exit") {
        assert_eq!(e["signal"], "SIGTERM", "{e}");
    }
}

#[test]
#[ignore = "stress: make test-stress"]
fn stress_signal_storm_for_10s_loses_no_exit_event() {
    let brood = Brood::new("storm-10s")
        .opts(["-n", "1000000", "-j", "20", "-q", "--no-prefix"])
        .prog("true")
        .watchdog(Duration::from_secs(60))
        .start();
    brood.wait_spawned(1);
    let pid = brood.pid();
    // brood is not reaped before finish(), so its pid stays ours.
    let storm = thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < Duration::from_secs(10) {
            for sig in [Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGCHLD] {
                if kill(Pid::from_raw(pid), sig).is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    });
    let sent = storm.join().unwrap();
    assert!(sent > 1000, "storm too small: {sent}");
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let s = assert_counts_exact(&out);
    assert!(count(&s, "spawned") > 100, "{}", out.context());
    assert_eq!(count(&s, "failed"), 0, "{}", out.context());
    assert_eq!(out.events_of("shutdown")[0]["reason"], "signal:SIGTERM");
}

#[test]
#[ignore = "stress: make test-stress"]
fn stress_pdeathsig_holds_when_brood_is_killed_mid_spawn() {
    // Many rounds: brood spawns 300 sleeps as fast as it can and is SIGKILLed
    // partway, so some children are between fork and exec (or before their
    // prctl) when it dies. None may survive, reported or not.
    let start = Instant::now();
    let mut round = 0u32;
    while start.elapsed() < Duration::from_secs(10) || round < 5 {
        round += 1;
        let token = format!("9{:05}{:04}", std::process::id() % 100_000, round);
        let brood = Brood::new("pdeath-race")
            .opts(["-n", "300", "-j", "300", "-q"])
            .prog("sleep")
            .args([token.as_str()])
            .start();
        let after = 1 + (round as usize * 37) % 250;
        brood.wait_events("some spawns", |ev| events_of(ev, "spawn").len() >= after);
        brood.signal(Signal::SIGKILL);
        let clean = try_wait_for(Duration::from_secs(2), || live_with_arg(&token).is_empty());
        let survivors = live_with_arg(&token);
        for &p in &survivors {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        assert!(
            clean,
            "round {round}: {} children survived a SIGKILLed brood (killed after {after} spawns): {:?}",
            survivors.len(),
            &survivors[..survivors.len().min(10)]
        );
        let out = brood.finish();
        assert_eq!(out.code(), None);
    }
}

#[test]
#[ignore = "stress: make test-stress"]
fn stress_fd_exhaustion_2000_spawns_with_64_fds() {
    let out = Brood::new("nofile-2000")
        .shell("ulimit -n 64 && exec \"$BROOD\" spawn -n 2000 -q --events \"$EVENTS\" -- /bin/sh -c 'sleep 0.01'")
        .watchdog(Duration::from_secs(120))
        .run();
    out.assert_no_panic();
    let s = assert_counts_exact(&out);
    assert_eq!(
        count(&s, "spawned") + count(&s, "spawn_failed"),
        2000,
        "{}",
        out.context()
    );
}

// ---------------------------------------------------------------------------
// Issue 10: idle control clients and the client limit

/// `brood run --socket S --events E -f brood.toml` on one long sleeper,
/// answering.
fn run_with_socket(name: &str) -> (Running, std::path::PathBuf) {
    let b = Brood::new(name);
    let sock = b.dir().join("s.sock");
    let config = b.dir().join("brood.toml");
    std::fs::write(&config, "[program.web]\ncommand = [\"sleep\", \"1000\"]\n").unwrap();
    let events = b.events_path();
    let brood = b
        .raw_args([
            OsStr::new("run"),
            OsStr::new("--events"),
            events.as_os_str(),
            OsStr::new("--socket"),
            sock.as_os_str(),
            OsStr::new("-f"),
            config.as_os_str(),
        ])
        .watchdog(Duration::from_secs(60))
        .start();
    wait_for(DEADLINE, "the socket", || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });
    (brood, sock)
}

#[test]
#[ignore = "stress: make test-stress"]
fn stress_idle_clients_are_closed_after_10s_and_clients_past_the_limit_wait_for_a_slot() {
    use std::io::{BufRead, BufReader, Read, Write};
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    let (brood, sock) = run_with_socket("idle-limit");
    // 1,100 clients that never send anything: 1,024 take every slot, the
    // rest wait in the listen backlog.
    let mut idle: Vec<_> = (0..1100)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock).unwrap())
        .collect();
    let t = Instant::now();
    let mut waiting = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    waiting.write_all(b"{\"verb\":\"status\"}\n").unwrap();
    waiting.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut line = String::new();
    BufReader::new(&waiting).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
    assert_eq!(
        v["ok"], true,
        "a client past the limit waits, it is not refused: {line}"
    );
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(8) && waited < Duration::from_secs(25),
        "served after {waited:?}: the idle clients should have held every slot for about 10 s"
    );
    // The first idle client was told why, then closed.
    let mut first = idle.remove(0);
    first.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut told = String::new();
    first.read_to_string(&mut told).unwrap();
    assert!(told.contains("no complete request within 10s"), "{told:?}");
    drop(idle);
    brood.signal(Signal::SIGTERM);
    brood.finish().assert_code(0);
}

#[test]
#[ignore = "stress: make test-stress"]
fn stress_a_logs_follower_is_never_closed_as_idle() {
    use std::io::{BufRead, BufReader, Write};
    let (brood, sock) = run_with_socket("follower-idle");
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(b"{\"verb\":\"logs\",\"target\":\"web\",\"follow\":true}\n")
        .unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":true"), "{line}");
    // Past the idle limit, the follower is still connected.
    assert!(
        holds_for(Duration::from_secs(12), || {
            let mut buf = [0u8; 1];
            // SAFETY: a non-blocking peek into a one-byte buffer.
            let n = unsafe {
                libc::recv(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    buf.as_mut_ptr().cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            n < 0
        }),
        "the follower was closed"
    );
    brood.signal(Signal::SIGTERM);
    brood.finish().assert_code(0);
}
