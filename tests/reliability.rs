//! Fault injection (issue 5): reaping storms, orphans, the exit-status matrix,
//! fork/fd/exec failures, stopped children, a SIGKILLed brood, pipes held by
//! grandchildren, signal storms, hostile console/config/argument input, and
//! what children inherit. Every test runs the real binary; brood must keep
//! running or shut down cleanly, lose nothing, leave no zombie and never
//! panic. The slow variants live in tests/stress.rs.

mod util;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use util::*;

// ---------------------------------------------------------------------------
// Helpers

/// A uid of its own for each unprivileged test, so that their process counts
/// (RLIMIT_NPROC is per real uid) never meet.
fn fresh_uid() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    61000 + (std::process::id() % 1000) * 4 + NEXT.fetch_add(1, Ordering::SeqCst)
}

/// Shell words that run the rest of a command line as `uid` with at most
/// `nproc` processes (soft and hard), without any capability.
fn unprivileged(uid: u32, nproc: u32) -> String {
    format!("setpriv --reuid={uid} --regid={uid} --clear-groups prlimit --nproc={nproc}:{nproc}")
}

fn make_world_writable(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
}

/// Single-quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Kills the given pids on drop (for processes a test deliberately
/// orphaned), unless they are already gone.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if pid > 1 && !process_dead(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The stderr written after byte `mark`.
fn stderr_after(brood: &Running, mark: usize) -> String {
    let err = brood.stderr();
    String::from_utf8_lossy(err.get(mark..).unwrap_or_default()).into_owned()
}

// ---------------------------------------------------------------------------
// Reaping storms and orphans

#[test]
fn reaping_storm_2000_children_counts_are_exact() {
    let out = Brood::new("storm2000")
        .opts(["-n", "2000", "-j", "2000", "-q", "--no-prefix"])
        .prog("true")
        .run();
    out.assert_code(0).assert_no_panic();
    let s = assert_counts_exact(&out);
    assert_eq!(count(&s, "spawned"), 2000, "{}", out.context());
    assert_eq!(count(&s, "succeeded"), 2000, "{}", out.context());
    assert_eq!(count(&s, "spawn_failed"), 0, "{}", out.context());
}

/// `sh -c SCRIPT PIDFILE`: a subshell starts 200 background `sleep`s (stdio
/// on /dev/null), writes their pids to PIDFILE and exits, so the sleeps are
/// orphaned at once.
fn orphan_maker(sleep: &str) -> String {
    format!(
        "(i=0; while [ $i -lt 200 ]; do sleep {sleep} </dev/null >/dev/null 2>&1 & echo $! >>\"$0\"; i=$((i+1)); done); echo made"
    )
}

#[test]
fn orphans_are_reaped_in_spawn_mode() {
    let b = Brood::new("orphans-spawn");
    let pidfile = b.dir().join("orphans");
    let mut brood = b
        .opts(["-i"])
        .stdin_pipe()
        .prog("sh")
        .args([
            OsStr::new("-c"),
            OsStr::new(&orphan_maker("0.3")),
            pidfile.as_os_str(),
        ])
        .start();
    brood.send("\n");
    brood.wait_events("the orphan maker exited", |ev| events_of(ev, "exit").len() == 1);
    let orphans = read_pids(&pidfile);
    let _cleanup = KillOnDrop(orphans.clone());
    assert_eq!(orphans.len(), 200);
    // Every orphan came back to brood (a subreaper) and was reaped: brood
    // ends up with no child at all, zombie or not.
    let bpid = brood.pid();
    if !try_wait_for(DEADLINE, || children_of(bpid).is_empty()) {
        panic!(
            "brood still has children (zombies are unreaped orphans): {:?}",
            children_of(bpid)
        );
    }
    for &pid in &orphans {
        assert!(
            proc_state(pid).is_none(),
            "orphan {pid} still exists: {:?}",
            proc_state(pid)
        );
    }
    brood.send("q\n");
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let s = assert_counts_exact(&out);
    assert_eq!(
        count(&s, "spawned"),
        1,
        "orphans are not children{}",
        out.context()
    );
}

#[test]
fn orphans_die_with_their_group_at_shutdown() {
    let b = Brood::new("orphans-group");
    let pidfile = b.dir().join("orphans");
    let mut brood = b
        .opts(["-i", "--grace", "2s"])
        .stdin_pipe()
        .prog("sh")
        .args([
            OsStr::new("-c"),
            OsStr::new(&orphan_maker("1000")),
            pidfile.as_os_str(),
        ])
        .start();
    brood.send("\n");
    brood.wait_events("the orphan maker exited", |ev| events_of(ev, "exit").len() == 1);
    let orphans = read_pids(&pidfile);
    let _cleanup = KillOnDrop(orphans.clone());
    assert_eq!(orphans.len(), 200);
    assert!(
        orphans.iter().all(|&p| !process_dead(p)),
        "orphans should be alive"
    );
    brood.send("q\n");
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert_counts_exact(&out);
    let alive: Vec<i32> = orphans.iter().copied().filter(|&p| !process_dead(p)).collect();
    assert!(
        alive.is_empty(),
        "{} orphans of the child's group outlived brood: {:?}{}",
        alive.len(),
        &alive[..alive.len().min(10)],
        out.context()
    );
}

#[test]
fn orphans_are_reaped_in_init_mode() {
    let b = Brood::new("orphans-init");
    let pidfile = b.dir().join("orphans");
    let done = b.dir().join("done");
    let script = format!(
        "{}; while [ ! -e \"$1\" ]; do sleep 0.05; done; exit 7",
        orphan_maker("0.3")
    );
    let brood = b
        .raw_args([
            OsStr::new("init"),
            OsStr::new("--"),
            OsStr::new("sh"),
            OsStr::new("-c"),
            OsStr::new(&script),
            pidfile.as_os_str(),
            done.as_os_str(),
        ])
        .start();
    let bpid = brood.pid();
    wait_for(DEADLINE, "200 orphan pids", || read_pids(&pidfile).len() == 200);
    let orphans = read_pids(&pidfile);
    let _cleanup = KillOnDrop(orphans.clone());
    // Only the command itself (the `sh` waiting for `done`) remains.
    let ok = try_wait_for(DEADLINE, || {
        let kids = children_of(bpid);
        kids.len() == 1 && kids[0].1 != 'Z'
    });
    assert!(ok, "orphans not reaped by brood init: {:?}", children_of(bpid));
    std::fs::write(&done, "").unwrap();
    let out = brood.finish();
    out.assert_code(7).assert_no_panic();
}

// ---------------------------------------------------------------------------
// The exit-status matrix

#[test]
fn exit_codes_0_to_255_are_reported_exactly() {
    let out = Brood::new("codes")
        .opts(["-n", "256", "--start", "0", "-j", "64", "-q"])
        .script("crash")
        .args(["{n}"])
        .run();
    out.assert_code(1).assert_no_panic();
    let events = out.events();
    let n_of: BTreeMap<&str, i64> = events_of(&events, "spawn")
        .iter()
        .map(|e| (e["label"].as_str().unwrap(), e["n"].as_i64().unwrap()))
        .collect();
    let exits = events_of(&events, "exit");
    assert_eq!(exits.len(), 256, "{}", out.context());
    let mut seen = HashSet::new();
    for e in exits {
        let n = n_of[e["label"].as_str().unwrap()];
        assert_eq!(e["code"].as_i64(), Some(n), "{e}");
        assert!(e["signal"].is_null(), "{e}");
        assert_eq!(e["core"], false, "{e}");
        seen.insert(n);
    }
    assert_eq!(seen.len(), 256);
    let s = assert_counts_exact(&out);
    assert_eq!(count(&s, "succeeded"), 1);
    assert_eq!(count(&s, "failed"), 255);
}

/// Runs `crash SIG` directly (not under brood) with core dumps enabled in
/// `dir`, and returns what the kernel said: WCOREDUMP.
fn kernel_dumps_core(dir: &Path, sig: &str) -> bool {
    let status = Command::new("sh")
        .arg("-c")
        .arg("ulimit -c unlimited; exec \"$0\" \"$1\" 2>/dev/null")
        .arg(script("crash"))
        .arg(sig)
        .env("CRASH_CORE", "1")
        .current_dir(dir)
        .status()
        .expect("run crash");
    use std::os::unix::process::ExitStatusExt;
    status.core_dumped()
}

#[test]
fn signal_deaths_and_core_flag_are_reported_exactly() {
    const SIGS: [&str; 6] = ["TERM", "KILL", "INT", "HUP", "SEGV", "ABRT"];
    let b = Brood::new("sigmatrix");
    let reference = TempDir::new("sigmatrix-ref");
    let expect_core: BTreeMap<&str, bool> = SIGS
        .iter()
        .map(|s| (*s, kernel_dumps_core(reference.path(), s)))
        .collect();
    // The child picks its signal by counter and execs crash (same pid).
    // One at a time (-j 1): two cores dumped at once into the same file can
    // make the kernel give up on one of them, and WCOREDUMP with it.
    let out = b
        .shell(
            "ulimit -c unlimited; export CRASH_CORE=1; exec \"$BROOD\" spawn -n 6 -j 1 -q --events \"$EVENTS\" -- \
             sh -c 'n=$1; set -- TERM KILL INT HUP SEGV ABRT; eval \"s=\\${$n}\"; exec \"$0\" \"$s\"' \"$SCRIPTS/crash\"",
        )
        .run();
    out.assert_code(1).assert_no_panic();
    let events = out.events();
    let n_of: BTreeMap<&str, i64> = events_of(&events, "spawn")
        .iter()
        .map(|e| (e["label"].as_str().unwrap(), e["n"].as_i64().unwrap()))
        .collect();
    let exits = events_of(&events, "exit");
    assert_eq!(exits.len(), 6, "{}", out.context());
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    for e in exits {
        let sig = SIGS[n_of[e["label"].as_str().unwrap()] as usize - 1];
        assert_eq!(e["signal"], format!("SIG{sig}"), "{e}{}", out.context());
        assert!(e["code"].is_null(), "{e}");
        let core = e["core"].as_bool().expect("core is a bool");
        assert_eq!(
            core, expect_core[sig],
            "core flag for SIG{sig} differs from what the kernel does (WCOREDUMP) (core_pattern {pattern:?}): {e}"
        );
        if matches!(sig, "TERM" | "KILL" | "INT" | "HUP") {
            assert!(!core, "SIG{sig} never dumps core: {e}");
        }
    }
    let s = assert_counts_exact(&out);
    assert_eq!(count(&s, "failed"), 6);
}

// ---------------------------------------------------------------------------
// fork failure (RLIMIT_NPROC) and fd exhaustion

#[test]
fn fork_failure_is_a_spawn_failed_event_not_a_crash() {
    let b = Brood::new("nproc-spawn");
    make_world_writable(b.dir());
    // The limit counts brood itself: no fork can succeed.
    let script = format!(
        "exec {} \"$BROOD\" spawn -n 3 --events \"$EVENTS\" -- /bin/true",
        unprivileged(fresh_uid(), 1)
    );
    let out = b.shell(&script).watchdog(Duration::from_secs(20)).run();
    out.assert_code(1).assert_no_panic();
    let failed = out.events_of("spawn_failed");
    assert_eq!(failed.len(), 3, "{}", out.context());
    for f in &failed {
        assert_eq!(f["stage"], "fork", "{f}");
        assert_eq!(f["errno"].as_i64(), Some(libc::EAGAIN as i64), "{f}");
    }
    let s = assert_counts_exact(&out);
    assert_eq!(count(&s, "spawned"), 0);
    assert_eq!(count(&s, "spawn_failed"), 3);
}

#[test]
fn fork_failure_with_children_alive_defers_and_accounts_for_every_spawn() {
    let b = Brood::new("nproc-defer");
    make_world_writable(b.dir());
    // brood + 2 children fit; 8 are asked for at once.
    let script = format!(
        "exec {} \"$BROOD\" spawn -n 8 --events \"$EVENTS\" -- /bin/sh -c 'sleep 0.2'",
        unprivileged(fresh_uid(), 3)
    );
    let out = b.shell(&script).watchdog(Duration::from_secs(25)).run();
    out.assert_no_panic();
    let s = assert_counts_exact(&out);
    assert_eq!(
        count(&s, "spawned") + count(&s, "spawn_failed"),
        8,
        "{}",
        out.context()
    );
    for f in out.events_of("spawn_failed") {
        assert_eq!(f["stage"], "fork", "{f}");
    }
}

#[test]
fn fork_failure_in_run_mode_is_retried_with_backoff_then_fatal() {
    let b = Brood::new("nproc-run");
    make_world_writable(b.dir());
    std::fs::write(
        b.dir().join("brood.toml"),
        "[program.a]\ncommand = [\"/bin/true\"]\nrestart = \"on-failure\"\nmax_restarts = 2\n\
         backoff = { initial = \"50ms\", max = \"100ms\" }\n",
    )
    .unwrap();
    let script = format!(
        "exec {} \"$BROOD\" run --events \"$EVENTS\"",
        unprivileged(fresh_uid(), 1)
    );
    let out = b.shell(&script).watchdog(Duration::from_secs(20)).run();
    out.assert_code(1).assert_no_panic();
    let events = out.events();
    let failed = events_of(&events, "spawn_failed");
    assert_eq!(failed.len(), 3, "1 start + 2 restarts{}", out.context());
    assert!(failed.iter().all(|f| f["stage"] == "fork"), "{}", out.context());
    let restarts = events_of(&events, "restart");
    assert_eq!(restarts.len(), 2, "{}", out.context());
    assert!(
        restarts
            .iter()
            .all(|r| r["delay_ms"].as_i64().is_some_and(|d| d > 0)),
        "{}",
        out.context()
    );
    assert_eq!(events_of(&events, "fatal").len(), 1, "{}", out.context());
    summary(&out);
}

#[test]
fn fork_failure_in_run_mode_recovers_when_a_slot_frees_up() {
    let b = Brood::new("nproc-recover");
    make_world_writable(b.dir());
    // Two instances, room for one child: the second start fails at fork and
    // is retried; once the first exits (0, on-failure: stays down) it starts.
    std::fs::write(
        b.dir().join("brood.toml"),
        "[program.a]\ncommand = [\"/bin/sleep\", \"0.5\"]\nnumprocs = 2\nrestart = \"on-failure\"\n\
         max_restarts = 50\nbackoff = { initial = \"50ms\", max = \"100ms\" }\n",
    )
    .unwrap();
    let script = format!(
        "exec {} \"$BROOD\" run --events \"$EVENTS\"",
        unprivileged(fresh_uid(), 2)
    );
    let brood = b.shell(&script).watchdog(Duration::from_secs(20)).start();
    brood.wait_events("both instances ran and exited 0", |ev| {
        let ok: HashSet<&str> = events_of(ev, "exit")
            .iter()
            .filter(|e| e["code"].as_i64() == Some(0))
            .filter_map(|e| e["label"].as_str())
            .collect();
        ok.len() == 2
    });
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_no_panic();
    let events = out.events();
    let failed = events_of(&events, "spawn_failed");
    assert!(!failed.is_empty(), "expected a fork failure{}", out.context());
    assert!(failed.iter().all(|f| f["stage"] == "fork"), "{}", out.context());
    assert!(!events_of(&events, "restart").is_empty(), "{}", out.context());
    assert!(events_of(&events, "fatal").is_empty(), "{}", out.context());
    summary(&out);
}

#[test]
fn fd_exhaustion_neither_hangs_nor_loses_count() {
    let b = Brood::new("nofile");
    let out = b
        .shell(
            "ulimit -n 64 && exec \"$BROOD\" spawn -n 200 -q --events \"$EVENTS\" -- /bin/sh -c 'sleep 0.05'",
        )
        .watchdog(Duration::from_secs(25))
        .run();
    out.assert_no_panic();
    assert!(matches!(out.code(), Some(0 | 1)), "{}", out.context());
    let s = assert_counts_exact(&out);
    assert_eq!(
        count(&s, "spawned") + count(&s, "spawn_failed"),
        200,
        "{}",
        out.context()
    );
    if count(&s, "spawn_failed") > 0 {
        assert_eq!(out.code(), Some(1), "{}", out.context());
    }
}

// ---------------------------------------------------------------------------
// exec failures of every kind

#[track_caller]
fn assert_exec_fails(name: &str, setup: impl FnOnce(&Path) -> String, reason: &str, errno: i32) {
    let b = Brood::new(name);
    let prog = setup(b.dir());
    let out = b.opts(["-n", "1"]).prog(&prog).run();
    out.assert_code(1).assert_no_panic();
    out.assert_stderr_contains(&format!("cannot exec '{prog}': {reason} (os error {errno})"));
    let failed = out.events_of("spawn_failed");
    assert_eq!(failed.len(), 1, "{}", out.context());
    assert_eq!(failed[0]["stage"], "exec", "{}", out.context());
    assert_eq!(
        failed[0]["errno"].as_i64(),
        Some(errno as i64),
        "{}",
        out.context()
    );
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("cannot exec '{prog}': {reason} (os error {errno})"))),
        "{}",
        out.context()
    );
    let s = assert_counts_exact(&out);
    assert_eq!(count(&s, "spawn_failed"), 1);
    assert_eq!(count(&s, "spawned"), 0);
}

fn write_exec(path: &Path, bytes: &[u8], mode: u32) -> String {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn exec_failure_missing_file_is_enoent() {
    assert_exec_fails(
        "x-missing",
        |d| d.join("nope").to_str().unwrap().to_owned(),
        "No such file or directory",
        libc::ENOENT,
    );
}

#[test]
fn exec_failure_no_execute_bit_is_eacces() {
    assert_exec_fails(
        "x-noexec",
        |d| write_exec(&d.join("noexec"), b"#!/bin/sh\necho hi\n", 0o644),
        "Permission denied",
        libc::EACCES,
    );
}

#[test]
fn exec_failure_directory_is_eacces() {
    assert_exec_fails(
        "x-dir",
        |d| {
            let p = d.join("adir");
            std::fs::create_dir(&p).unwrap();
            p.to_str().unwrap().to_owned()
        },
        "Permission denied",
        libc::EACCES,
    );
}

#[test]
fn exec_failure_missing_interpreter_is_enoent() {
    assert_exec_fails(
        "x-interp",
        |d| write_exec(&d.join("script"), b"#!/nonexistent/interpreter\necho hi\n", 0o755),
        "No such file or directory",
        libc::ENOENT,
    );
}

#[test]
fn exec_failure_bad_elf_is_enoexec_not_run_by_a_shell() {
    let mut elf = b"\x7fELF".to_vec();
    elf.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
    assert_exec_fails(
        "x-elf",
        |d| write_exec(&d.join("bad-elf"), &elf, 0o755),
        "Exec format error",
        libc::ENOEXEC,
    );
}

// ---------------------------------------------------------------------------
// Stopped children

/// The state column of `LABEL`'s row in an `l` listing.
fn listed_state(listing: &str, label: &str) -> Option<String> {
    listing
        .lines()
        .rfind(|l| l.split_whitespace().next() == Some(label))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
}

#[test]
fn stopped_child_is_listed_as_stopped_not_exited_and_runs_again_after_cont() {
    let mut brood = Brood::new("stopcont")
        .opts(["-i"])
        .stdin_pipe()
        .prog("sh")
        .args(["-c", "echo ready; kill -STOP $$; echo resumed; exec sleep 1000"])
        .start();
    brood.send("\n");
    let pid = brood.wait_spawned(1)[0];
    wait_for(DEADLINE, "the child to stop itself", || {
        proc_state(pid) == Some('T')
    });
    let mark = brood.stderr().len();
    brood.send("l\n");
    let ok = try_wait_for(DEADLINE, || {
        listed_state(&stderr_after(&brood, mark), "sh.1").as_deref() == Some("stopped")
    });
    assert!(ok, "not listed as stopped:\n{}", stderr_after(&brood, mark));
    assert!(
        events_of(&brood.events(), "exit").is_empty(),
        "a stop is not an exit"
    );
    kill(Pid::from_raw(pid), Signal::SIGCONT).unwrap();
    brood.wait_stdout("resumed", |s| s.contains("sh.1 | resumed"));
    let mark = brood.stderr().len();
    brood.send("l\n");
    let ok = try_wait_for(DEADLINE, || {
        listed_state(&stderr_after(&brood, mark), "sh.1").as_deref() == Some("running")
    });
    assert!(ok, "not listed as running:\n{}", stderr_after(&brood, mark));
    assert!(
        events_of(&brood.events(), "exit").is_empty(),
        "a continue is not an exit"
    );
    brood.send("q\n");
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let exits = out.events_of("exit");
    assert_eq!(exits.len(), 1, "{}", out.context());
    assert_eq!(exits[0]["signal"], "SIGTERM", "{}", out.context());
    assert_counts_exact(&out);
}

// ---------------------------------------------------------------------------
// brood killed with SIGKILL

#[test]
fn sigkilled_brood_takes_every_child_with_it() {
    // Even counters exec sleep, odd ones lastwords (which traps TERM).
    let brood = Brood::new("sigkill")
        .opts(["-n", "20", "-j", "20"])
        .prog("sh")
        .args([
            OsStr::new("-c"),
            OsStr::new("if [ $(($1 % 2)) = 0 ]; then exec sleep 1000; else exec \"$0\" \"$1\"; fi"),
            script("lastwords").as_os_str(),
        ])
        .start();
    let pids = brood.wait_spawned(20);
    brood.wait_stdout("10 ready lines", |s| s.matches("| ready").count() >= 10);
    brood.signal(Signal::SIGKILL);
    let gone = try_wait_for(Duration::from_secs(2), || pids.iter().all(|&p| process_dead(p)));
    let survivors: Vec<_> = pids.iter().filter(|&&p| !process_dead(p)).collect();
    let _cleanup = KillOnDrop(pids.clone());
    assert!(gone, "children survived a SIGKILLed brood by 2 s: {survivors:?}");
    let out = brood.finish();
    assert_eq!(out.code(), None, "brood was SIGKILLed");
}

/// Starts `brood spawn -n 1 OPTS -- sh -c 'trap "" TERM; exec sleep 1000'`:
/// a child that ignores SIGTERM (the ignored disposition survives exec).
/// Returns the session and the child's pid, once TERM is ignored.
fn term_ignoring_child(name: &str, opts: &[&str]) -> (Running, i32) {
    let brood = Brood::new(name)
        .opts(["-n", "1"].iter().chain(opts))
        .prog("sh")
        .args(["-c", "trap '' TERM; exec sleep 1000"])
        .start();
    let pid = brood.wait_spawned(1)[0];
    wait_for(
        Duration::from_secs(5),
        "the child to ignore TERM and exec sleep",
        || {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("SigIgn:"))
                    .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                    .is_some_and(|m| m & (1 << (libc::SIGTERM - 1)) != 0)
                    && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
            })
        },
    );
    (brood, pid)
}

#[test]
fn sigkilled_brood_takes_a_term_ignoring_child_with_it_by_default() {
    // Regression (issue 10, item 20): the parent-death signal was SIGTERM,
    // which this child ignores, so it outlived brood.
    let (brood, pid) = term_ignoring_child("pdeath-default", &[]);
    let _cleanup = KillOnDrop(vec![pid]);
    brood.signal(Signal::SIGKILL);
    let gone = try_wait_for(Duration::from_secs(5), || process_dead(pid));
    assert!(
        gone,
        "a TERM-ignoring child survived a SIGKILLed brood: {:?}",
        proc_state(pid)
    );
    assert_eq!(brood.finish().code(), None, "brood was SIGKILLed");
}

#[test]
fn sigkilled_brood_takes_a_term_ignoring_child_with_it_under_pdeathsig_kill() {
    let (brood, pid) = term_ignoring_child("pdeath-kill", &["--pdeathsig", "KILL"]);
    let _cleanup = KillOnDrop(vec![pid]);
    brood.signal(Signal::SIGKILL);
    let gone = try_wait_for(Duration::from_secs(5), || process_dead(pid));
    assert!(
        gone,
        "a TERM-ignoring child survived a SIGKILLed brood: {:?}",
        proc_state(pid)
    );
    assert_eq!(brood.finish().code(), None, "brood was SIGKILLed");
}

#[test]
fn pdeathsig_term_is_what_the_child_gets_and_may_ignore() {
    // The trade-off the README states: with --pdeathsig TERM a child that
    // ignores TERM outlives brood. It did get the signal, as its own choice
    // to ignore shows: it is alive and re-parented.
    let (brood, pid) = term_ignoring_child("pdeath-term", &["--pdeathsig", "SIGTERM"]);
    let _cleanup = KillOnDrop(vec![pid]);
    let brood_pid = brood.pid();
    brood.signal(Signal::SIGKILL);
    wait_for(Duration::from_secs(5), "the child to be re-parented", || {
        proc_ppid(pid).is_some_and(|p| p != brood_pid)
    });
    // Nothing should happen in this time: the child ignores the signal.
    let died = try_wait_for(Duration::from_millis(300), || process_dead(pid));
    assert!(!died, "the child died although it ignores TERM");
    let _ = brood.finish();
}

#[test]
fn pdeathsig_rejects_unknown_signals_and_no_pdeathsig() {
    for opts in [
        &["--pdeathsig", "NOPE"][..],
        &["--pdeathsig", "0"][..],
        &["--pdeathsig", "KILL", "--no-pdeathsig"][..],
    ] {
        let out = Brood::new("pdeath-usage").opts(opts).prog("/bin/true").run();
        out.assert_code(2);
        assert!(out.events_of("spawn").is_empty(), "{}", out.context());
    }
}

// ---------------------------------------------------------------------------
// A grandchild holding the pipe

/// Spawns one `sh` that leaves a grandchild (setsid'd or not) holding its
/// stdout, prints the grandchild's pid and exits; returns the session, the
/// grandchild pid and the child's spawn time.
fn pipe_holder(name: &str, setsid: bool) -> (Running, i32) {
    let cmd = if setsid {
        "setsid sleep 1000 & echo gc $!; exit 0"
    } else {
        "sleep 1000 & echo gc $!; exit 0"
    };
    let mut brood = Brood::new(name)
        .opts(["-i", "--grace", "3s"])
        .stdin_pipe()
        .prog("sh")
        .args(["-c", cmd])
        .start();
    brood.send("\n");
    brood.wait_stdout("the grandchild pid", |s| s.contains("sh.1 | gc "));
    let gc: i32 = brood
        .stdout_str()
        .split("sh.1 | gc ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("grandchild pid");
    // The exit is reported although the pipe stays open.
    let start = Instant::now();
    brood.wait_events("the child's exit", |ev| events_of(ev, "exit").len() == 1);
    assert!(start.elapsed() < Duration::from_secs(2), "exit reported late");
    (brood, gc)
}

fn assert_shutdown_prompt(out: &Output, since: Instant, limit: Duration) {
    out.assert_code(0).assert_no_panic();
    assert!(
        since.elapsed() < limit,
        "shutdown took {:?}{}",
        since.elapsed(),
        out.context()
    );
    assert_counts_exact(out);
}

#[test]
fn pipe_held_by_grandchild_q_shuts_down() {
    let (mut brood, gc) = pipe_holder("holder-q", false);
    let _cleanup = KillOnDrop(vec![gc]);
    let t = Instant::now();
    brood.send("q\n");
    let out = brood.finish();
    assert_shutdown_prompt(&out, t, Duration::from_secs(5));
    assert!(
        process_dead(gc),
        "the grandchild in the child's group must die with it"
    );
}

#[test]
fn pipe_held_by_setsid_grandchild_eof_shuts_down() {
    let (mut brood, gc) = pipe_holder("holder-eof", true);
    let _cleanup = KillOnDrop(vec![gc]);
    let t = Instant::now();
    brood.close_stdin();
    let out = brood.finish();
    assert_shutdown_prompt(&out, t, Duration::from_secs(5));
}

#[test]
fn pipe_held_by_setsid_grandchild_sigterm_shuts_down() {
    let (brood, gc) = pipe_holder("holder-term", true);
    let _cleanup = KillOnDrop(vec![gc]);
    let t = Instant::now();
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    assert_shutdown_prompt(&out, t, Duration::from_secs(5));
}

#[test]
fn pipe_held_by_setsid_grandchild_batch_gives_up_after_about_a_second() {
    let b = Brood::new("holder-batch")
        .opts(["-n", "1"])
        .prog("sh")
        .args(["-c", "setsid sleep 1000 & echo gc $!; exit 0"]);
    let brood = b.start();
    brood.wait_stdout("the grandchild pid", |s| s.contains("| gc "));
    let gc: i32 = brood
        .stdout_str()
        .split("| gc ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("grandchild pid");
    let _cleanup = KillOnDrop(vec![gc]);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let events = out.events();
    let exit_ts = events_of(&events, "exit")[0]["ts"].as_f64().unwrap();
    let end_ts = summary(&out)["ts"].as_f64().unwrap();
    assert!(
        end_ts - exit_ts < 3.0,
        "brood waited {:.2}s on a pipe held outside every group{}",
        end_ts - exit_ts,
        out.context()
    );
    assert_counts_exact(&out);
}

// ---------------------------------------------------------------------------
// Signal storms

#[test]
fn signal_storm_of_usr1_usr2_chld_loses_no_exit() {
    let brood = Brood::new("sigstorm")
        .opts(["-n", "300", "-j", "30", "-q"])
        .prog("sh")
        .args(["-c", "sleep 0.02"])
        .watchdog(Duration::from_secs(40))
        .start();
    // Only once brood is up: before it installs its handlers, USR1's
    // default action would kill it, as it would any process.
    brood.wait_spawned(1);
    let pid = brood.pid();
    // brood is not reaped before finish(), so its pid cannot be reused while
    // the storm runs.
    let storm = thread::spawn(move || {
        let mut sent = 0;
        for _ in 0..2000 {
            for sig in [Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGCHLD] {
                if kill(Pid::from_raw(pid), sig).is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    });
    let sent = storm.join().unwrap();
    let out = brood.finish();
    assert!(sent > 0);
    out.assert_code(0).assert_no_panic();
    let s = assert_counts_exact(&out);
    assert_eq!(count(&s, "spawned"), 300, "{}", out.context());
    assert_eq!(count(&s, "succeeded"), 300, "{}", out.context());
}

#[test]
fn signal_storm_of_sighup_shuts_down_once_and_cleanly() {
    let mut brood = Brood::new("hupstorm")
        .opts(["-i"])
        .stdin_pipe()
        .prog("sleep")
        .args(["1000"])
        .start();
    for _ in 0..5 {
        brood.send("\n");
    }
    brood.wait_spawned(5);
    let pid = brood.pid();
    let storm = thread::spawn(move || {
        for _ in 0..2000 {
            let _ = kill(Pid::from_raw(pid), Signal::SIGHUP);
            let _ = kill(Pid::from_raw(pid), Signal::SIGCHLD);
        }
    });
    storm.join().unwrap();
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    let shutdowns = out.events_of("shutdown");
    assert_eq!(shutdowns.len(), 1, "{}", out.context());
    assert_eq!(shutdowns[0]["reason"], "signal:SIGHUP", "{}", out.context());
    let s = assert_counts_exact(&out);
    assert_eq!(count(&s, "stopped"), 5, "{}", out.context());
}

// ---------------------------------------------------------------------------
// Hostile console input

#[test]
fn console_2000_list_commands_in_one_write_are_all_answered() {
    let out = Brood::new("l2000")
        .opts(["-i"])
        .stdin("l\n".repeat(2000))
        .prog("true")
        .run();
    out.assert_code(0).assert_no_panic();
    let headers = out
        .stderr_lines()
        .iter()
        .filter(|l| l.starts_with("LABEL"))
        .count();
    assert_eq!(headers, 2000, "{}", out.context());
    summary(&out);
}

#[test]
fn console_500_empty_lines_in_one_write_spawn_500_children() {
    let out = Brood::new("enter500")
        .opts(["-i", "-q"])
        .stdin("\n".repeat(500))
        .prog("true")
        .run();
    out.assert_code(0).assert_no_panic();
    let s = assert_counts_exact(&out);
    assert_eq!(count(&s, "spawned"), 500, "{}", out.context());
    assert_eq!(count(&s, "spawn_failed"), 0, "{}", out.context());
}

#[test]
fn console_partial_utf8_nuls_and_blank_lines_do_not_crash() {
    let mut input = Vec::new();
    input.extend_from_slice(b"\xe2\x82\n"); // a cut-off euro sign
    input.extend_from_slice(b"   \n"); // only spaces
    input.extend_from_slice(b"\t \t\n");
    input.extend_from_slice(b"l\0\n");
    input.extend_from_slice(b"\0\0\0\n");
    input.extend_from_slice(b"k \xff\xfe\n");
    input.extend_from_slice(b"r \xc3\n");
    input.extend_from_slice(b"l\n");
    input.extend_from_slice(b"\xf0\x9f\x98"); // cut off, and no newline before EOF
    let out = Brood::new("console-utf8")
        .opts(["-i"])
        .stdin(input)
        .prog("sleep")
        .args(["1000"])
        .run();
    out.assert_code(0).assert_no_panic();
    assert!(
        out.stderr_str().contains("LABEL"),
        "the final l was answered{}",
        out.context()
    );
    assert_eq!(out.events_of("shutdown")[0]["reason"], "eof", "{}", out.context());
    assert_counts_exact(&out);
}

// ---------------------------------------------------------------------------
// Hostile config

#[track_caller]
fn assert_env_file_rejected(name: &str, env: &[u8], line: usize) {
    let b = Brood::new(name);
    std::fs::write(b.dir().join("Procfile"), "a: echo hi; sleep 1000\n").unwrap();
    std::fs::write(b.dir().join(".env"), env).unwrap();
    let out = b.raw_args(["run"]).watchdog(Duration::from_secs(10)).run();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains(&format!(".env:{line}:"));
    assert!(out.stdout.is_empty(), "nothing may start{}", out.context());
    assert!(
        !out.stderr_str().contains("spawned"),
        "nothing may start{}",
        out.context()
    );
}

#[test]
fn malformed_env_line_without_equals_is_a_config_error() {
    assert_env_file_rejected("env-noeq", b"A=1\nJUSTAWORD\n", 2);
}

#[test]
fn malformed_env_unterminated_quote_is_a_config_error() {
    assert_env_file_rejected("env-quote", b"# c\n\nA=\"open\n", 3);
}

#[test]
fn malformed_env_bad_name_is_a_config_error() {
    assert_env_file_rejected("env-name", b"1A=x\n", 1);
}

#[test]
fn malformed_env_empty_name_is_a_config_error() {
    assert_env_file_rejected("env-empty", b"=x\n", 1);
}

#[test]
fn env_value_with_nul_byte_is_a_config_error() {
    let b = Brood::new("env-nul");
    std::fs::write(b.dir().join("Procfile"), "a: echo hi; sleep 1000\n").unwrap();
    std::fs::write(b.dir().join(".env"), b"A=x\0y\n").unwrap();
    let out = b.raw_args(["run"]).watchdog(Duration::from_secs(10)).run();
    out.assert_code(2).assert_no_panic();
    assert!(out.stdout.is_empty(), "{}", out.context());
}

#[test]
fn env_file_of_binary_garbage_never_crashes() {
    let b = Brood::new("env-junk");
    std::fs::write(b.dir().join("Procfile"), "a: echo hi; sleep 1000\n").unwrap();
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(b.dir().join(".env"), junk).unwrap();
    let out = b.raw_args(["run"]).watchdog(Duration::from_secs(10)).run();
    out.assert_code(2).assert_no_panic();
}

/// A directory whose name holds a space and a newline.
const AWKWARD: &str = "dir with space\nand newline";

fn awkward_config(b: &Brood) -> std::path::PathBuf {
    let dir = b.dir().join(AWKWARD);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("Procfile"),
        "web: echo \"up with $GREETING\"; sleep 1000\n",
    )
    .unwrap();
    std::fs::write(dir.join(".env"), "GREETING=hello-awkward\n").unwrap();
    dir
}

fn run_until_up_then_term(brood: Running) -> Output {
    brood.wait_stdout("the program's line", |s| {
        s.contains("web.1 | up with hello-awkward")
    });
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    out
}

#[test]
fn config_path_with_space_and_newline_works_with_f() {
    let b = Brood::new("awkward-f");
    let dir = awkward_config(&b);
    let events = b.events_path();
    let brood = b
        .raw_args([
            OsStr::new("run"),
            OsStr::new("-f"),
            dir.join("Procfile").as_os_str(),
            OsStr::new("--events"),
            events.as_os_str(),
        ])
        .start();
    let out = run_until_up_then_term(brood);
    assert_counts_exact(&out);
}

#[test]
fn config_in_cwd_with_space_and_newline_works() {
    let b = Brood::new("awkward-cwd");
    let dir = awkward_config(&b);
    let script = format!(
        "cd {} && exec \"$BROOD\" run --events \"$EVENTS\"",
        sh_quote(dir.to_str().unwrap())
    );
    let brood = b.shell(&script).start();
    let out = run_until_up_then_term(brood);
    assert_counts_exact(&out);
}

// ---------------------------------------------------------------------------
// Arguments

const ARGV_HEX: &str = "import os, sys\nfor a in sys.argv[1:]:\n    print('arg ' + os.fsencode(a).hex())";

fn argv_hex_lines(out: &Output) -> Vec<String> {
    out.stdout_lines()
        .iter()
        .filter_map(|l| split_prefixed(l).map(|(_, r)| r.to_owned()))
        .filter_map(|r| r.strip_prefix("arg ").map(str::to_owned))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn empty_newline_and_non_utf8_arguments_reach_the_child_unchanged() {
    let args: Vec<&[u8]> = vec![
        b"",
        b"a\nb",
        b"\xff\xfe\x80",
        b" ",
        b"tab\there",
        b"\n",
        b"caf\xc3\xa9",
    ];
    let out = Brood::new("argv")
        .opts(["-n", "1"])
        .prog("python3")
        .args(["-c", ARGV_HEX])
        .args(args.iter().map(|a| OsStr::from_bytes(a)))
        .run();
    out.assert_code(0).assert_no_panic();
    let mut expect: Vec<String> = args.iter().map(|a| hex(a)).collect();
    expect.push(hex(b"1"));
    assert_eq!(argv_hex_lines(&out), expect, "{}", out.context());
}

#[test]
fn no_shell_in_spawn_mode_metacharacters_are_literal() {
    let args = ["a;b", "$(id)", "`id`", "*", "$HOME", "a|b", "> x"];
    let out = Brood::new("noshell")
        .opts(["-n", "1"])
        .prog("python3")
        .args(["-c", ARGV_HEX])
        .args(args)
        .run();
    out.assert_code(0).assert_no_panic();
    let mut expect: Vec<String> = args.iter().map(|a| hex(a.as_bytes())).collect();
    expect.push(hex(b"1"));
    assert_eq!(argv_hex_lines(&out), expect, "{}", out.context());
}

#[test]
fn no_shell_in_toml_command_metacharacters_are_literal() {
    let b = Brood::new("noshell-toml");
    let args = ["a;b", "$(id)", "`id`", "*", "$HOME"];
    let quoted: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    std::fs::write(
        b.dir().join("brood.toml"),
        format!(
            "[program.p]\ncommand = [\"python3\", \"-c\", {:?}, {}]\nrestart = \"never\"\n",
            ARGV_HEX,
            quoted.join(", ")
        ),
    )
    .unwrap();
    let events = b.events_path();
    let brood = b
        .raw_args([OsStr::new("run"), OsStr::new("--events"), events.as_os_str()])
        .start();
    brood.wait_events("p.1 exited", |ev| events_of(ev, "exit").len() == 1);
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_no_panic();
    let expect: Vec<String> = args.iter().map(|a| hex(a.as_bytes())).collect();
    assert_eq!(argv_hex_lines(&out), expect, "{}", out.context());
    assert_eq!(
        out.events_of("exit")[0]["code"].as_i64(),
        Some(0),
        "{}",
        out.context()
    );
}

// ---------------------------------------------------------------------------
// What children inherit, whatever brood inherited

#[test]
fn children_get_clean_fds_and_signals_even_from_a_hostile_parent() {
    // The wrapper ignores HUP (python also ignores PIPE and XFSZ), blocks
    // USR1 and USR2, and leaks fd 9 (opened by bash without close-on-exec).
    let wrapper = "import os, signal, sys\n\
                   signal.signal(signal.SIGHUP, signal.SIG_IGN)\n\
                   signal.signal(signal.SIGINT, signal.SIG_IGN)\n\
                   signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM})\n\
                   os.execv(sys.argv[1], sys.argv[1:])";
    let script = format!(
        "exec 9</dev/null; exec python3 -c {} \"$BROOD\" spawn -n 1 --events \"$EVENTS\" -- \"$SCRIPTS/inspect\"",
        sh_quote(wrapper)
    );
    let out = Brood::new("hostile-parent").shell(&script).run();
    out.assert_code(0).assert_no_panic();
    let report: Vec<String> = out
        .stdout_lines()
        .iter()
        .filter_map(|l| split_prefixed(l).map(|(_, r)| r.to_owned()))
        .collect();
    let field = |name: &str| {
        report
            .iter()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_owned())
            .unwrap_or_else(|| panic!("no {name} line{}", out.context()))
    };
    assert_eq!(field("fds:"), "0 1 2", "{}", out.context());
    assert_eq!(field("SigBlk:"), "0000000000000000", "{}", out.context());
    assert_eq!(field("SigIgn:"), "0000000000000000", "{}", out.context());
}

#[test]
fn events_file_is_created_mode_0600_even_with_umask_0() {
    let b = Brood::new("events-mode2");
    let events = b.events_path();
    let brood = b
        .shell("umask 000; exec \"$BROOD\" spawn -i --events \"$EVENTS\" -- true")
        .stdin_pipe()
        .start();
    wait_for(DEADLINE, "the events file", || events.exists());
    let mode = std::fs::metadata(&events).unwrap().permissions().mode() & 0o7777;
    let out = {
        let mut brood = brood;
        brood.close_stdin();
        brood.finish()
    };
    out.assert_code(0).assert_no_panic();
    assert_eq!(mode, 0o600, "events file mode {mode:o}{}", out.context());
}

#[test]
fn events_path_that_is_a_symlink_is_refused_and_the_target_untouched() {
    let b = Brood::new("events-symlink");
    let elsewhere = TempDir::new("events-symlink-target");
    let target = elsewhere.join("precious");
    std::fs::write(&target, "precious data\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&target, b.events_path()).unwrap();
    let out = b.opts(["-n", "1"]).prog("true").run();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains("events");
    assert!(out.stdout.is_empty(), "{}", out.context());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious data\n");
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
        0o644
    );
}

#[test]
fn events_path_that_is_a_dangling_symlink_creates_nothing() {
    let b = Brood::new("events-dangling");
    let elsewhere = TempDir::new("events-dangling-target");
    let target = elsewhere.join("should-not-exist");
    std::os::unix::fs::symlink(&target, b.events_path()).unwrap();
    let out = b.opts(["-n", "1"]).prog("true").run();
    out.assert_code(2).assert_no_panic();
    assert!(!target.exists(), "brood followed the symlink");
}

#[test]
fn control_socket_is_mode_0600_even_with_umask_0() {
    let b = Brood::new("sock-mode");
    std::fs::write(b.dir().join("Procfile"), "a: sleep 1000\n").unwrap();
    let sock = b.dir().join(".brood.sock");
    let brood = b
        .shell("umask 000; exec \"$BROOD\" run --events \"$EVENTS\"")
        .start();
    wait_for(DEADLINE, "the control socket", || sock.exists());
    brood.wait_spawned(1);
    let mode = std::fs::symlink_metadata(&sock).unwrap().permissions().mode() & 0o777;
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert_eq!(mode, 0o600, "socket mode {mode:o}{}", out.context());
}

// ---------------------------------------------------------------------------
// Issue 10: input that is not what it claims to be

/// `brood ARGS...` in a fresh dir holding `files`, expected to stop with a
/// usage error (exit 2) naming `message`, quickly, with nothing started.
#[track_caller]
fn assert_refused(name: &str, files: &[(&str, &[u8])], args: &[&str], message: &str) -> Output {
    let b = Brood::new(name);
    for (file, text) in files {
        std::fs::write(b.dir().join(file), text).unwrap();
    }
    let out = b.raw_args(args).watchdog(Duration::from_secs(20)).run();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains(message);
    assert!(out.stdout.is_empty(), "nothing may start{}", out.context());
    assert!(
        !out.stderr_str().contains("spawned"),
        "nothing may start{}",
        out.context()
    );
    out
}

#[test]
fn config_or_env_from_a_device_fifo_or_directory_is_refused() {
    assert_refused(
        "cfg-zero",
        &[],
        &["run", "-f", "/dev/zero"],
        "'/dev/zero': a character device, not a regular file",
    );
    assert_refused(
        "env-zero",
        &[("Procfile", b"a: sleep 1000\n")],
        &["run", "-e", "/dev/zero"],
        "env file '/dev/zero': a character device",
    );
    assert_refused(
        "cfg-dir",
        &[],
        &["run", "-f", "/"],
        "a directory, not a regular file",
    );
    // A FIFO nobody writes to would block start-up in open() for ever.
    let b = Brood::new("cfg-fifo");
    let fifo = b.dir().join("Procfile");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = b.raw_args(["run"]).watchdog(Duration::from_secs(20)).run();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains("a FIFO, not a regular file");
}

#[test]
fn config_file_over_16_mib_is_refused() {
    let b = Brood::new("cfg-huge");
    let big = std::fs::File::create(b.dir().join("Procfile")).unwrap();
    big.set_len(17 << 20).unwrap();
    drop(big);
    let out = b.raw_args(["run"]).watchdog(Duration::from_secs(20)).run();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains("larger than 16 MiB");
}

#[test]
fn dangling_procfile_symlink_is_named_not_missing() {
    let b = Brood::new("cfg-dangling");
    std::os::unix::fs::symlink("gone/Procfile", b.dir().join("Procfile")).unwrap();
    let out = b.raw_args(["run"]).watchdog(Duration::from_secs(20)).run();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains("'Procfile': it is a dangling symlink (to 'gone/Procfile')");
}

#[test]
fn procfile_and_env_with_a_utf8_bom_load() {
    let b = Brood::new("cfg-bom");
    std::fs::write(
        b.dir().join("Procfile"),
        "\u{feff}web: echo \"bom $GREETING\"; sleep 1000\n",
    )
    .unwrap();
    std::fs::write(b.dir().join(".env"), "\u{feff}GREETING=ok\n").unwrap();
    std::fs::write(
        b.dir().join("b.toml"),
        "\u{feff}[program.t]\ncommand = [\"echo\", \"toml ok\"]\nrestart = \"never\"\n",
    )
    .unwrap();
    let brood = b.raw_args(["run"]).start();
    brood.wait_stdout("web's line", |s| s.contains("web.1 | bom ok"));
    brood.signal(Signal::SIGTERM);
    brood.finish().assert_code(0).assert_no_panic();
    let b = Brood::new("cfg-bom-toml");
    std::fs::write(
        b.dir().join("b.toml"),
        "\u{feff}[program.t]\ncommand = [\"echo\", \"toml ok\"]\nrestart = \"never\"\n",
    )
    .unwrap();
    let out = b
        .raw_args(["run", "-f", "b.toml"])
        .watchdog(Duration::from_secs(20))
        .run();
    out.assert_code(0).assert_no_panic();
    assert!(out.stdout_str().contains("t.1 | toml ok"), "{}", out.context());
}

#[test]
fn nul_in_command_env_or_cwd_is_located_and_names_the_program() {
    let cases: [(&str, &[u8], &str); 6] = [
        (
            "nul-cmd",
            b"[program.a]\ncommand = [\"echo\", \"x\\u0000y\"]\n",
            "brood.toml:2:11: program 'a': command contains a NUL byte",
        ),
        (
            "nul-shell",
            b"[program.a]\nshell = \"echo \\u0000\"\n",
            "brood.toml:2:9: program 'a': shell contains a NUL byte",
        ),
        (
            "nul-env",
            b"[program.a]\ncommand = [\"true\"]\nenv = { A = \"x\\u0000\" }\n",
            "brood.toml:3:13: program 'a': env A contains a NUL byte",
        ),
        (
            "nul-cwd",
            b"[program.a]\ncommand = [\"true\"]\ncwd = \"d\\u0000\"\n",
            "brood.toml:3:7: program 'a': cwd contains a NUL byte",
        ),
        (
            "nul-key",
            b"[program.a]\ncommand = [\"true\"]\nenv = { \"A\\u0000\" = \"x\" }\n",
            "brood.toml:3:21: program 'a': env key 'A\\0' contains a NUL byte",
        ),
        (
            "nul-procfile",
            b"web: echo a\0b\n",
            "Procfile:1:12: program 'web': command contains a NUL byte",
        ),
    ];
    for (name, text, message) in cases {
        let file = if name == "nul-procfile" {
            "Procfile"
        } else {
            "brood.toml"
        };
        assert_refused(name, &[(file, text)], &["run", "-f", file], message);
    }
}

#[test]
fn env_keys_with_equals_or_empty_are_refused() {
    assert_refused(
        "key-eq",
        &[(
            "brood.toml",
            b"[program.a]\ncommand = [\"true\"]\nenv = { \"A=B\" = \"x\" }\n",
        )],
        &["run", "-f", "brood.toml"],
        "brood.toml:3:17: program 'a': env key 'A=B' contains '='",
    );
    assert_refused(
        "key-empty",
        &[(
            "brood.toml",
            b"[program.a]\ncommand = [\"true\"]\nenv = { \"\" = \"x\" }\n",
        )],
        &["run", "-f", "brood.toml"],
        "brood.toml:3:14: program 'a': env key '' is empty",
    );
}

#[test]
fn duplicate_name_among_200000_programs_is_reported_quickly() {
    let mut text = String::with_capacity(200_000 * 16);
    for i in 0..200_000 {
        text.push_str(&format!("p{i}: true\n"));
    }
    text.push_str("p7: true\n");
    let t = Instant::now();
    assert_refused(
        "dup-200k",
        &[("Procfile", text.as_bytes())],
        &["run"],
        "Procfile:200001:1: duplicate program name 'p7'",
    );
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
}

#[test]
fn huge_durations_are_refused_in_one_readable_line() {
    for (name, value) in [("dur-float", "1e308"), ("dur-text", "\"999999999999h\"")] {
        let text = format!("[program.a]\ncommand = [\"true\"]\nstop_timeout = {value}\n");
        let out = assert_refused(
            name,
            &[("brood.toml", text.as_bytes())],
            &["run", "-f", "brood.toml"],
            "brood.toml:3:16: stop_timeout: invalid duration",
        );
        out.assert_stderr_contains("too large (at most a year");
        assert!(out.stderr_str().len() < 200, "{}", out.context());
    }
    let out = Brood::new("dur-grace")
        .opts(["--grace", "1e308"])
        .prog("true")
        .run();
    out.assert_code(2).assert_no_panic();
    assert!(out.stderr_str().len() < 400, "{}", out.context());
}

#[test]
fn computed_port_above_65535_is_refused() {
    let b = Brood::new("port-high");
    std::fs::write(b.dir().join("Procfile"), "web: sleep 1000\nworker: sleep 1000\n").unwrap();
    let out = b
        .raw_args(["run"])
        .env("PORT", "65500")
        .watchdog(Duration::from_secs(20))
        .run();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains("PORT for worker.1 would be 65600, above 65535");
    let b = Brood::new("port-junk");
    std::fs::write(b.dir().join("Procfile"), "web: sleep 1000\n").unwrap();
    let out = b
        .raw_args(["run"])
        .env("PORT", "99999")
        .watchdog(Duration::from_secs(20))
        .run();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains("PORT=99999 in the environment is not a port number");
}

#[test]
fn start_near_u64_max_that_would_wrap_is_a_usage_error() {
    let out = Brood::new("start-wrap")
        .opts(["--start", "18446744073709551615", "-n", "2"])
        .prog("true")
        .run();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains("would count past");
    assert!(out.events_of("spawn").is_empty(), "{}", out.context());
    let out = Brood::new("start-top")
        .opts(["--start", "18446744073709551613", "-n", "2"])
        .prog("echo")
        .run();
    out.assert_code(0).assert_no_panic();
    let counters: Vec<u64> = out
        .events_of("spawn")
        .iter()
        .filter_map(|e| e["n"].as_u64())
        .collect();
    assert_eq!(counters, [u64::MAX - 2, u64::MAX - 1], "{}", out.context());
}

// ---------------------------------------------------------------------------
// Issue 10, round two: kills, hangs, leaks, and success where there was
// failure. Each test is named after the defect it guards against.

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// These tests mount, enter namespaces or switch uid: they need root (as
/// `make test` has in CI) and fail saying so rather than pass unrun.
fn require_root() {
    assert!(is_root(), "this test needs root (mounts, namespaces or setpriv)");
}

/// The CPU time (user + system, in clock ticks) a process has used.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The live and zombie children of `pid`.
fn zombies_of(pid: i32) -> usize {
    children_of(pid).iter().filter(|(_, s)| *s == 'Z').count()
}

/// A live `brood run --socket S --events E -f brood.toml` on `config`,
/// up and answering with every instance running.
struct RunServer {
    brood: Running,
    sock: std::path::PathBuf,
}

impl RunServer {
    fn start(name: &str, config: &str) -> RunServer {
        let b = Brood::new(name);
        let sock = b.dir().join("s.sock");
        let config_path = b.dir().join("brood.toml");
        std::fs::write(&config_path, config).unwrap();
        let events = b.events_path();
        let brood = b
            .raw_args([
                OsStr::new("run"),
                OsStr::new("--events"),
                events.as_os_str(),
                OsStr::new("--socket"),
                sock.as_os_str(),
                OsStr::new("-f"),
                config_path.as_os_str(),
            ])
            .start();
        let server = RunServer { brood, sock };
        let up = try_wait_for(DEADLINE, || {
            server.request_line(b"{\"verb\":\"status\"}\n").is_some_and(|r| {
                r["programs"]
                    .as_array()
                    .is_some_and(|ps| !ps.is_empty() && ps.iter().all(|p| p["state"] == "running"))
            })
        });
        assert!(up, "brood run never came up{}", server.brood.stderr_str());
        server
    }

    /// One raw request over a fresh connection; the first answer line.
    fn request_line(&self, bytes: &[u8]) -> Option<serde_json::Value> {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&self.sock).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(bytes).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        serde_json::from_str(&line).ok()
    }

    fn ctl(&self, args: &[&str]) -> Output {
        let mut argv: Vec<std::ffi::OsString> =
            vec!["ctl".into(), "--socket".into(), self.sock.clone().into()];
        argv.extend(args.iter().map(Into::into));
        Brood::new("ctl")
            .raw_args(argv)
            .watchdog(Duration::from_secs(20))
            .run()
    }
}

/// Unmounts a test's tmpfs on drop, pass or fail.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn stranger_given_an_emptied_groups_number_is_never_signalled() {
    require_root();
    // In a PID namespace of its own (so that no other process takes the
    // number first): child 1 leaves a member in its group and exits; the
    // member dies; a stranger is made to get the group's number (and its
    // own session); then brood shuts down.
    let b = Brood::new("stranger");
    let inner = b.dir().join("inner.sh");
    std::fs::write(
        &inner,
        r#"set -u
cd "$(dirname "$0")"
CHILD='if [ "$1" = 1 ]; then sh -c "until [ -e die ]; do sleep 0.01; done" & echo $! > member; exit 0; else exec sleep 1000; fi'
"$BROOD" spawn -n 2 --grace 1s --events "$EVENTS" -- sh -c "$CHILD" sh > out 2> err &
B=$!
wait_for() { for _ in $(seq 1 1000); do eval "$1" && return 0; sleep 0.01; done; echo "timed out: $1" >&2; exit 9; }
wait_for '[ -s member ]'
M=$(cat member)
P1=$(awk '{print $5}' /proc/$M/stat)
wait_for 'grep "\"event\":\"exit\"" "$EVENTS" | grep -q "\"pid\":$P1[,}]"'
touch die
wait_for '[ ! -e /proc/$M ]'
S=
for _ in $(seq 1 100); do
  echo $((P1 - 1)) > /proc/sys/kernel/ns_last_pid
  setsid sleep 1000 &
  S=$!
  [ "$S" = "$P1" ] && break
  kill -KILL $S; wait $S 2>/dev/null; S=
done
[ -n "$S" ] || { echo "no process got pid $P1" >&2; kill -KILL $B; exit 8; }
# The stranger leads its own session and group once setsid has run.
wait_for '[ "$(cut -d" " -f6 /proc/$S/stat)" = "$S" ]'
echo "pgid=$P1" >&2
kill -TERM $B
wait $B
echo "code=$?" >&2
if kill -0 $S 2>/dev/null; then echo "stranger=alive" >&2; else echo "stranger=dead" >&2; fi
kill -KILL $S 2>/dev/null
exit 0
"#,
    )
    .unwrap();
    let out = b
        .shell("exec unshare --pid --fork --mount-proc bash ./inner.sh")
        .watchdog(Duration::from_secs(30))
        .run();
    out.assert_code(0);
    // The script reports on its stderr (the temp dir goes with the run).
    let stderr = out.stderr_str();
    let read = |key: &str| {
        stderr
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or("")
            .to_string()
    };
    let pgid: i64 = read("pgid")
        .parse()
        .unwrap_or_else(|_| panic!("no pgid{}", out.context()));
    assert_eq!(
        read("stranger"),
        "alive",
        "brood killed the stranger that got pgid {pgid}{}",
        out.context()
    );
    let signalled: Vec<_> = out
        .events_of("signal")
        .into_iter()
        .filter(|e| e["pid"] == pgid)
        .collect();
    assert!(
        signalled.is_empty(),
        "signal events for the emptied group: {signalled:?}"
    );
    assert_eq!(read("code"), "0", "brood's exit status{}", out.context());
}

#[test]
fn ctl_start_and_restart_during_shutdown_are_refused_and_start_nothing() {
    let config = r#"
[program.web]
command = ["bash", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"]
stop_timeout = "30s"
"#;
    let server = RunServer::start("start-in-shutdown", config);
    // TERM is ignored once it says so.
    server.brood.wait_stdout("ready", |s| s.contains("ready"));
    server.brood.signal(Signal::SIGTERM);
    server
        .brood
        .wait_events("shutdown", |ev| !events_of(ev, "shutdown").is_empty());
    let spawned = events_of(&server.brood.events(), "spawn").len();
    for verb in ["start", "restart"] {
        let out = server.ctl(&[verb, "web"]);
        out.assert_code(1).assert_no_panic();
        out.assert_stderr_contains("shutting down");
    }
    assert_eq!(
        events_of(&server.brood.events(), "spawn").len(),
        spawned,
        "a child was started during shutdown"
    );
    // Skip the grace: the second TERM SIGKILLs what is left.
    server.brood.signal(Signal::SIGTERM);
    let out = server.brood.finish();
    out.assert_no_panic();
    assert_eq!(out.events_of("spawn").len(), spawned, "{}", out.context());
}

#[test]
fn failed_execs_without_j_never_pile_up_as_zombies() {
    require_root();
    // Fenced: another uid with at most 400 processes, so that a pile-up
    // shows as failed forks instead of filling the host's pid table.
    let b = Brood::new("zombie-pileup");
    make_world_writable(b.dir());
    let uid = fresh_uid();
    let mut brood = b
        .shell(&format!(
            "exec {} \"$BROOD\" spawn -n 2000 --events \"$EVENTS\" -- /no/such/prog",
            unprivileged(uid, 400)
        ))
        .start();
    let pid = brood.pid();
    let mut most = 0;
    while brood.is_running() {
        most = most.max(zombies_of(pid));
        thread::sleep(Duration::from_millis(2)); // a sampling interval
    }
    let out = brood.finish();
    out.assert_code(1).assert_no_panic();
    let failed = out.events_of("spawn_failed");
    assert_eq!(failed.len(), 2000, "{}", out.context());
    assert!(
        failed.iter().all(|e| e["stage"] == "exec"),
        "forks failed: zombies filled the process limit{}",
        out.context()
    );
    assert!(most < 100, "{most} zombies at once");
}

#[test]
fn a_batch_under_a_32_fd_limit_waits_and_every_spawn_succeeds() {
    let out = Brood::new("fd32")
        .shell("ulimit -n 32 && exec \"$BROOD\" spawn -n 300 --events \"$EVENTS\" -- /bin/true")
        .watchdog(Duration::from_secs(30))
        .run();
    out.assert_code(0).assert_no_panic();
    let s = assert_counts_exact(&out);
    assert_eq!(count(&s, "spawned"), 300, "{}", out.context());
    assert_eq!(count(&s, "succeeded"), 300);
    assert_eq!(count(&s, "spawn_failed"), 0);
}

#[test]
fn shutdown_with_stdout_stalled_does_not_spin() {
    let mut brood = Brood::new("no-spin")
        .opts(["-n", "1", "--grace", "5s"])
        .script("flood")
        .args(["1000000"])
        .stdout_paused()
        .start();
    let pid = brood.wait_spawned(1)[0];
    // The flood blocks writing its pipe once brood stopped reading it.
    wait_for(DEADLINE, "the flood blocked on its pipe", || {
        std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("pipe_write"))
    });
    brood.signal(Signal::SIGTERM);
    brood.wait_events("shutdown", |ev| !events_of(ev, "shutdown").is_empty());
    brood.wait_events("the flood's exit", |ev| !events_of(ev, "exit").is_empty());
    let before = cpu_ticks(brood.pid()).unwrap();
    let t = Instant::now();
    // An observation window past the 1 s drain limit (whose deadline, once
    // past, made the loop spin): brood, waiting for its reader, must sleep.
    while t.elapsed() < Duration::from_millis(2500) {
        thread::sleep(Duration::from_millis(50));
    }
    let used = cpu_ticks(brood.pid()).unwrap() - before;
    assert!(brood.is_running());
    assert!(
        used <= 25,
        "brood used {used} ticks of CPU in 2.5 s while its reader stalled"
    );
    let out = brood.finish();
    out.assert_no_panic();
}

#[test]
fn stalled_stderr_keeps_broods_memory_bounded() {
    // stderr is a FIFO that the shell holds open for reading and never
    // reads; the console is flooded with `h`, each answered with the help.
    let b = Brood::new("stderr-stall");
    let fifo = b.dir().join("err.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let brood = b
        .shell(
            "exec 3<>err.fifo; { echo; exec yes h; } | \"$BROOD\" spawn -i --events \"$EVENTS\" -- sleep 1000 2>err.fifo & \
             echo $! > brood.pid; wait",
        )
        .start();
    let pid_file = brood.dir().join("brood.pid");
    wait_for(DEADLINE, "brood's pid", || read_pids(&pid_file).len() == 1);
    let pid = read_pids(&pid_file)[0];
    brood.wait_spawned(1);
    let mut most = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        most = most.max(rss_kib(pid).unwrap_or(0));
        thread::sleep(Duration::from_millis(50)); // a sampling interval
    }
    assert!(!process_dead(pid), "brood died");
    assert!(
        most < 64 * 1024,
        "brood's RSS reached {most} KiB with stderr stalled"
    );
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    // Now read the FIFO, so that brood can write its last words and exit.
    let drain = std::fs::File::open(&fifo).unwrap();
    thread::spawn(move || std::io::copy(&mut &drain, &mut std::io::sink()));
    let out = brood.finish();
    out.assert_no_panic();
}

#[test]
fn child_that_leaves_its_group_is_stopped_through_its_pid_and_killed_after_the_grace() {
    // The child joins brood's group (a group it does not lead) and ignores
    // TERM: kill(-pid) finds no group; only its pid reaches it.
    let brood = Brood::new("left-group")
        .opts(["-n", "1", "--grace", "500ms"])
        .prog("python3")
        .args([
            "-c",
            "import os, signal, time\nos.setpgid(0, os.getpgid(os.getppid()))\n\
             signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('left', flush=True)\ntime.sleep(1000)",
        ])
        .watchdog(Duration::from_secs(15))
        .start();
    brood.wait_stdout("the child left its group", |s| s.contains("left"));
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_no_panic();
    let exits = out.events_of("exit");
    assert_eq!(exits.len(), 1, "{}", out.context());
    assert_eq!(exits[0]["signal"], "SIGKILL", "{}", out.context());
    let sent: Vec<String> = out
        .events_of("signal")
        .iter()
        .map(|e| e["signal"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(sent, ["SIGTERM", "SIGKILL"], "{}", out.context());
}

/// Every signal brood can catch that is neither a stop request nor a fault
/// brood raises itself: none may kill `spawn` or `run`.
fn stray_signals() -> Vec<i32> {
    let mut sigs = vec![
        libc::SIGALRM,
        libc::SIGPROF,
        libc::SIGVTALRM,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGPWR,
        libc::SIGIO,
        libc::SIGSYS,
        libc::SIGTRAP,
        libc::SIGSTKFLT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ];
    sigs.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    sigs
}

#[test]
fn stray_signals_neither_kill_spawn_nor_touch_its_children() {
    let mut brood = Brood::new("stray-spawn")
        .opts(["-i", "--grace", "2s"])
        .prog("sleep")
        .args(["1000"])
        .stdin_pipe()
        .start();
    brood.send("\n\n");
    let pids = brood.wait_spawned(2);
    for sig in stray_signals() {
        // SAFETY: kill takes integers only.
        assert_eq!(unsafe { libc::kill(brood.pid(), sig) }, 0);
    }
    // Every signal sent above is delivered before brood answers this.
    brood.send("l\n");
    brood.wait_stderr("the listing", |s| s.contains("sleep.2"));
    assert!(brood.is_running(), "a stray signal killed brood");
    for pid in &pids {
        assert!(!process_dead(*pid), "child {pid} was hurt");
    }
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert_counts_exact(&out);
}

#[test]
fn stray_signals_neither_kill_run_nor_touch_its_children() {
    let config = r#"
[program.web]
command = ["sleep", "1000"]
numprocs = 2
"#;
    let server = RunServer::start("stray-run", config);
    let pids: Vec<i32> = events_of(&server.brood.events(), "spawn")
        .iter()
        .map(|e| e["pid"].as_i64().unwrap() as i32)
        .collect();
    for sig in stray_signals() {
        // SAFETY: kill takes integers only.
        assert_eq!(unsafe { libc::kill(server.brood.pid(), sig) }, 0);
    }
    // Delivered before brood answers this request.
    assert!(
        server.request_line(b"{\"verb\":\"status\"}\n").is_some(),
        "brood stopped answering"
    );
    for pid in &pids {
        assert!(!process_dead(*pid), "child {pid} was hurt");
    }
    server.brood.signal(Signal::SIGTERM);
    let out = server.brood.finish();
    out.assert_code(0).assert_no_panic();
    assert_eq!(summary(&out)["event"], "summary");
}

#[test]
fn compound_procfile_command_gets_one_term_and_escalation_is_sigkill() {
    // The group's leader is `sh -c`, which exits on TERM once its child
    // has recorded it (so that a second TERM cannot merge with the first
    // while pending); the child traps TERM, records each one, and stays.
    let b = Brood::new("double-term");
    let dir = b.dir().to_path_buf();
    std::fs::write(
        dir.join("Procfile"),
        "a: trap 'until [ -s terms ]; do sleep 0.01; done; exit 0' TERM; \
         sh -c 'trap \"echo TERM >> terms\" TERM; echo ready; while :; do sleep 0.05; done' & wait\n",
    )
    .unwrap();
    let events = b.events_path();
    let brood = b
        .raw_args([
            OsStr::new("run"),
            OsStr::new("--events"),
            events.as_os_str(),
            OsStr::new("--socket"),
            dir.join("s.sock").as_os_str(),
        ])
        .start();
    brood.wait_stdout("ready", |s| s.contains("ready"));
    brood.signal(Signal::SIGTERM);
    let terms = dir.join("terms");
    let count = || {
        std::fs::read_to_string(&terms)
            .unwrap_or_default()
            .lines()
            .count()
    };
    wait_for(DEADLINE, "the child's TERM", || count() >= 1);
    brood.wait_events("the leader's exit", |ev| !events_of(ev, "exit").is_empty());
    // An observation window: a second stop signal would be recorded here.
    assert!(
        holds_for(Duration::from_millis(400), || count() == 1),
        "the child got {} TERMs",
        count()
    );
    let mut brood = brood;
    brood.signal(Signal::SIGTERM);
    wait_for(DEADLINE, "brood's exit", || !brood.is_running());
    // Counted before `finish` takes the temp dir away.
    let terms = count();
    let out = brood.finish();
    out.assert_no_panic();
    assert_eq!(terms, 1, "{}", out.context());
    let sent: Vec<(String, String)> = out
        .events_of("signal")
        .iter()
        .map(|e| {
            (
                e["label"].as_str().unwrap_or("").to_string(),
                e["signal"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        sent,
        [
            ("a.1".to_string(), "SIGTERM".to_string()),
            ("a.1".to_string(), "SIGKILL".to_string())
        ],
        "{}",
        out.context()
    );
}

#[test]
fn term_during_a_2000_spawn_burst_is_acted_on_at_once() {
    let brood = Brood::new("burst-term")
        .opts(["-n", "2000", "--grace", "2s"])
        .prog("sleep")
        .args(["30"])
        .watchdog(Duration::from_secs(60))
        .start();
    brood.wait_spawned(50);
    let sent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_no_panic();
    let shutdown = &out.events_of("shutdown")[0];
    let at = shutdown["ts"].as_f64().unwrap();
    assert!(
        at - sent < 0.25,
        "shutdown began {:.3} s after the TERM",
        at - sent
    );
    let late = out
        .events_of("spawn")
        .iter()
        .filter(|e| e["ts"].as_f64().unwrap() > at)
        .count();
    assert_eq!(late, 0, "spawns after the shutdown began");
    assert!(out.events_of("spawn").len() < 2000);
}

#[test]
fn stdout_on_a_full_disk_is_named_and_fails_the_run() {
    let out = Brood::new("dev-full")
        .shell("exec \"$BROOD\" spawn -n 3 --events \"$EVENTS\" -- sh -c 'seq 1 1000' sh > /dev/full")
        .run();
    out.assert_no_panic();
    assert_eq!(out.code(), Some(1), "{}", out.context());
    out.assert_stderr_contains("No space left on device");
}

#[test]
fn stdout_past_the_file_size_limit_is_named_and_fails_the_run_without_sigxfsz() {
    let out = Brood::new("ulimit-f")
        .shell(
            "ulimit -f 4 && \"$BROOD\" spawn -n 3 --events \"$EVENTS\" -- sh -c 'seq 1 100000' sh > out.txt; \
             echo \"status $?\" >&2",
        )
        .run();
    out.assert_no_panic();
    out.assert_stderr_contains("File too large");
    out.assert_stderr_contains("status 1");
}

#[test]
fn events_on_a_full_disk_are_whole_lines_lost_ones_counted_and_the_run_fails() {
    require_root();
    let b = Brood::new("events-full");
    let mnt = b.dir().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "none"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot mount a tmpfs");
    let unmount = Unmount(mnt.clone());
    let events = mnt.join("events.jsonl");
    let mut brood = b
        .raw_args([
            OsStr::new("spawn"),
            OsStr::new("-n"),
            OsStr::new("300"),
            OsStr::new("-j"),
            OsStr::new("20"),
            OsStr::new("--events"),
            events.as_os_str(),
            OsStr::new("--"),
            OsStr::new("/bin/true"),
        ])
        .start();
    wait_for(DEADLINE, "brood's exit", || !brood.is_running());
    // Read, and unmounted, before `finish` takes the temp dir away.
    let text = std::fs::read(&events).unwrap();
    drop(unmount);
    let out = brood.finish();
    out.assert_no_panic();
    assert_eq!(out.code(), Some(1), "{}", out.context());
    out.assert_stderr_contains("could not be written");
    assert!(text.len() > 1000, "the disk was not filled");
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(
            serde_json::from_slice::<serde_json::Value>(line).is_ok(),
            "a torn line: {}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn events_fifo_whose_reader_stalls_never_blocks_shutdown() {
    let b = Brood::new("events-fifo");
    let fifo = b.dir().join("ev.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // A reader that never reads.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let brood = b
        .raw_args([
            OsStr::new("spawn"),
            OsStr::new("-n"),
            OsStr::new("100000"),
            OsStr::new("-j"),
            OsStr::new("4"),
            OsStr::new("--events"),
            fifo.as_os_str(),
            OsStr::new("--"),
            OsStr::new("/bin/true"),
        ])
        .watchdog(Duration::from_secs(20))
        .start();
    // A pipe of one page: full after a few dozen events, and too full for
    // the shutdown's own events.
    // SAFETY: fcntl on a fd this test owns.
    unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    let queued = || {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int to `n`.
        unsafe { libc::ioctl(reader.as_raw_fd(), libc::FIONREAD, &mut n) };
        n
    };
    wait_for(DEADLINE, "the FIFO full", || queued() >= 3900);
    let t = Instant::now();
    brood.signal(Signal::SIGTERM);
    let out = brood.finish();
    out.assert_no_panic();
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        t.elapsed()
    );
    drop(reader);
}

#[test]
fn events_fifo_without_a_reader_is_refused_at_once() {
    let b = Brood::new("events-fifo-noreader");
    let fifo = b.dir().join("ev.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let t = Instant::now();
    let out = b
        .raw_args([
            OsStr::new("spawn"),
            OsStr::new("-n"),
            OsStr::new("1"),
            OsStr::new("--events"),
            fifo.as_os_str(),
            OsStr::new("--"),
            OsStr::new("/bin/true"),
        ])
        .watchdog(Duration::from_secs(10))
        .run();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains("no reader");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn scale_to_zero_keeps_a_successful_run_successful() {
    // `a` is scaled away (its child dies of SIGTERM); `b` then ends well
    // on its own, and with it the run: nothing failed.
    let config = r#"
[program.a]
command = ["sleep", "1000"]
[program.b]
command = ["sh", "-c", "until [ -e go ]; do sleep 0.02; done"]
restart = "never"
"#;
    let server = RunServer::start("scale-zero", config);
    server.ctl(&["scale", "a=0"]).assert_code(0);
    server.brood.wait_events("a.1's exit", |ev| {
        events_of(ev, "exit").iter().any(|e| e["label"] == "a.1")
    });
    std::fs::write(server.brood.dir().join("go"), "").unwrap();
    let out = server.brood.finish();
    out.assert_no_panic();
    assert_eq!(
        out.events_of("shutdown")[0]["reason"],
        "done",
        "{}",
        out.context()
    );
    out.assert_code(0);
}

#[test]
fn logs_answer_over_1_mib_is_written_whole() {
    // 300 lines of 1000 control bytes: 300 KB in the ring, ~1.8 MB as JSON.
    let config = r#"
[program.noisy]
command = ["python3", "-c", "import sys, time\nfor _ in range(300): print('\x01' * 1000)\nprint('done', flush=True)\ntime.sleep(1000)"]
stop_timeout = "1s"
"#;
    let server = RunServer::start("biglogs", config);
    let ok = try_wait_for(DEADLINE, || {
        server
            .request_line(b"{\"verb\":\"logs\",\"target\":\"noisy\",\"lines\":1}\n")
            .is_some_and(|r| r["lines"][0]["line"] == "done")
    });
    assert!(ok, "the program's output never reached the ring");
    let out = server.ctl(&["logs", "-n", "1000", "noisy"]);
    out.assert_code(0).assert_no_panic();
    let lines = out.stdout_lines();
    assert_eq!(lines.len(), 301, "every line of the answer{}", out.context());
    assert!(lines[0].ends_with(&"\u{1}".repeat(1000)), "{}", lines[0]);
    server.brood.signal(Signal::SIGTERM);
    server.brood.finish().assert_code(0);
}

/// A program that writes lines as fast as it can, for ever.
const FLOOD: &str = r#"
[program.flood]
command = ["yes", "a line of logs that a slow follower will not keep up with"]
stop_timeout = "1s"
"#;

#[test]
fn slow_logs_follower_is_dropped_with_a_last_line_saying_why() {
    use std::io::{BufRead, BufReader, Write};
    let server = RunServer::start("slow-follower", FLOOD);
    let mut s = std::os::unix::net::UnixStream::connect(&server.sock).unwrap();
    s.write_all(b"{\"verb\":\"logs\",\"target\":\"flood\",\"lines\":1,\"follow\":true}\n")
        .unwrap();
    // Not reading: the backlog fills, the ring runs past it, brood drops
    // the client. Then read everything it was sent.
    server
        .brood
        .wait_stderr("the follower dropped", |t| t.contains("fell behind"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut last = String::new();
    let mut lines = 0;
    for line in BufReader::new(s).lines() {
        let line = line.expect("brood must end the stream, not leave it hanging");
        lines += 1;
        last = line;
    }
    let v: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
    assert_eq!(v["ok"], false, "the last of {lines} lines: {last}");
    assert!(v["error"].as_str().unwrap_or("").contains("too slowly"), "{last}");
    server.brood.signal(Signal::SIGTERM);
    server.brood.finish().assert_no_panic();
}

#[test]
fn ctl_logs_f_that_falls_behind_prints_why_and_exits_1() {
    let server = RunServer::start("slow-ctl", FLOOD);
    // brood ctl with a stdout nobody reads: it stops reading the socket.
    let ctl = Brood::new("ctl-slow")
        .raw_args([
            OsStr::new("ctl"),
            OsStr::new("--socket"),
            server.sock.as_os_str(),
            OsStr::new("logs"),
            OsStr::new("-f"),
            OsStr::new("flood"),
        ])
        .stdout_paused()
        .watchdog(Duration::from_secs(30))
        .start();
    // Dropped once its backlog is full and the ring has moved past it:
    // then let it read what it was sent.
    server
        .brood
        .wait_stderr("the follower dropped", |s| s.contains("fell behind"));
    let out = ctl.finish();
    out.assert_no_panic();
    assert_eq!(
        out.code(),
        Some(1),
        "{}",
        out.context().chars().take(3000).collect::<String>()
    );
    out.assert_stderr_contains("too slowly");
    server.brood.signal(Signal::SIGTERM);
    server.brood.finish().assert_no_panic();
}

/// Lets this test process hold many sockets.
fn raise_fd_limit() {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
}

#[test]
fn ctl_shutdown_works_with_200_idle_clients_connected() {
    raise_fd_limit();
    let server = RunServer::start("idle-200", "[program.web]\ncommand = [\"sleep\", \"1000\"]\n");
    let idle: Vec<_> = (0..200)
        .map(|_| std::os::unix::net::UnixStream::connect(&server.sock).unwrap())
        .collect();
    let t = Instant::now();
    server.ctl(&["shutdown"]).assert_code(0).assert_no_panic();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        t.elapsed()
    );
    let out = server.brood.finish();
    out.assert_code(0).assert_no_panic();
    drop(idle);
}

#[test]
fn a_thousand_clients_at_once_are_all_answered() {
    use std::io::{BufRead, BufReader, Write};
    raise_fd_limit();
    let server = RunServer::start("thousand", "[program.web]\ncommand = [\"sleep\", \"1000\"]\n");
    let mut conns: Vec<_> = (0..1000)
        .map(|_| std::os::unix::net::UnixStream::connect(&server.sock).unwrap())
        .collect();
    for c in &mut conns {
        c.write_all(b"{\"verb\":\"status\"}\n").unwrap();
    }
    for c in conns {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut line = String::new();
        BufReader::new(c).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(v["ok"], true, "{line}");
    }
    server.brood.signal(Signal::SIGTERM);
    server.brood.finish().assert_code(0);
}

#[test]
fn request_without_a_trailing_newline_is_answered_at_eof() {
    use std::io::{Read, Write};
    let server = RunServer::start("no-newline", "[program.web]\ncommand = [\"sleep\", \"1000\"]\n");
    let mut s = std::os::unix::net::UnixStream::connect(&server.sock).unwrap();
    s.write_all(b"{\"verb\":\"status\"}").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("an answer, then the end");
    let v: serde_json::Value = serde_json::from_str(answer.trim()).unwrap_or_default();
    assert_eq!(v["ok"], true, "{answer:?}");
    server.brood.signal(Signal::SIGTERM);
    server.brood.finish().assert_code(0);
}

#[test]
fn setsid_leftovers_get_term_at_shutdown_named_in_a_message_and_an_event() {
    let b = Brood::new("leftover");
    let pidfile = b.dir().join("leftover.pid");
    let brood = b
        .opts(["-n", "1", "--grace", "5s"])
        .prog("sh")
        .args([
            "-c",
            &format!(
                "setsid python3 -c 'import time; open(\"ready\", \"w\").close(); time.sleep(1000)' \
                 </dev/null >/dev/null 2>&1 & echo $! > {}; until [ -e ready ]; do sleep 0.01; done",
                sh_quote(pidfile.to_str().unwrap())
            ),
            "sh",
        ])
        .watchdog(Duration::from_secs(15))
        .start();
    wait_for(DEADLINE, "the leftover's pid", || read_pids(&pidfile).len() == 1);
    let leftover = read_pids(&pidfile)[0];
    let _kill = KillOnDrop(vec![leftover]);
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert!(process_dead(leftover), "the leftover {leftover} outlived brood");
    out.assert_stderr_contains(&format!(
        "leftover pid {leftover} (python3) outlived its group: sent SIGTERM"
    ));
    let signals = out.events_of("signal");
    assert!(
        signals
            .iter()
            .any(|e| e["label"] == "leftover" && e["pid"] == leftover && e["signal"] == "SIGTERM"),
        "{}",
        out.context()
    );
}

#[test]
fn setsid_leftover_that_ignores_term_is_killed_after_the_grace() {
    let b = Brood::new("leftover-kill");
    let pidfile = b.dir().join("leftover.pid");
    let brood = b
        .opts(["-n", "1", "--grace", "300ms"])
        .prog("sh")
        .args([
            "-c",
            &format!(
                "setsid python3 -c 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); \
                 open(\"ready\", \"w\").close(); time.sleep(1000)' \
                 </dev/null >/dev/null 2>&1 & echo $! > {}; until [ -e ready ]; do sleep 0.01; done",
                sh_quote(pidfile.to_str().unwrap())
            ),
            "sh",
        ])
        .watchdog(Duration::from_secs(15))
        .start();
    wait_for(DEADLINE, "the leftover's pid", || read_pids(&pidfile).len() == 1);
    let leftover = read_pids(&pidfile)[0];
    let _kill = KillOnDrop(vec![leftover]);
    let out = brood.finish();
    out.assert_no_panic();
    assert!(process_dead(leftover), "the leftover {leftover} outlived brood");
    let sent: Vec<_> = out
        .events_of("signal")
        .iter()
        .filter(|e| e["label"] == "leftover")
        .map(|e| e["signal"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(sent, ["SIGTERM", "SIGKILL"], "{}", out.context());
}

#[test]
fn without_proc_leftovers_are_named_in_a_warning_and_left_alone() {
    require_root();
    let b = Brood::new("leftover-noproc");
    let pidfile = b.dir().join("leftover.pid");
    std::fs::write(
        b.dir().join("child.sh"),
        "setsid python3 -c 'import time; open(\"ready\", \"w\").close(); time.sleep(1000)' </dev/null >/dev/null 2>&1 &\n\
         echo $! > leftover.pid\n\
         until [ -e ready ]; do sleep 0.01; done\n",
    )
    .unwrap();
    let mut brood = b
        .shell(
            "exec unshare --mount --fork sh -c 'mount -t tmpfs none /proc && exec \"$BROOD\" spawn -n 1 --grace 300ms \
             --events \"$EVENTS\" -- sh ./child.sh'",
        )
        .watchdog(Duration::from_secs(15))
        .start();
    wait_for(DEADLINE, "the leftover's pid", || read_pids(&pidfile).len() == 1);
    let leftover = read_pids(&pidfile)[0];
    let _kill = KillOnDrop(vec![leftover]);
    wait_for(DEADLINE, "brood's exit", || !brood.is_running());
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    out.assert_stderr_contains("cannot name them without its own /proc");
    assert!(!process_dead(leftover), "nothing may be killed blindly");
    assert!(out.events_of("signal").iter().all(|e| e["label"] != "leftover"));
}

#[test]
fn without_proc_a_stalled_stdout_never_blocks_the_loop() {
    require_root();
    // /proc hidden: brood cannot reopen its stdout (a pipe nobody reads)
    // as a non-blocking description of its own.
    let mut brood = Brood::new("noproc-stdout")
        .shell(
            "exec unshare --mount --fork sh -c 'mount -t tmpfs none /proc && exec \"$BROOD\" spawn -n 1 --grace 300ms \
             --events \"$EVENTS\" -- \"$SCRIPTS/flood\" 1000000'",
        )
        .stdout_paused()
        .watchdog(Duration::from_secs(30))
        .start();
    let child = brood.wait_spawned(1)[0];
    wait_for(DEADLINE, "the flood blocked on its pipe", || {
        std::fs::read_to_string(format!("/proc/{child}/wchan")).is_ok_and(|w| w.contains("pipe_write"))
    });
    let pid = children_of(brood.pid())
        .first()
        .map(|(p, _)| *p)
        .expect("brood under unshare");
    // SAFETY: kill takes integers only.
    let term = || unsafe { libc::kill(pid, libc::SIGTERM) };
    term();
    brood.wait_events("shutdown", |ev| !events_of(ev, "shutdown").is_empty());
    // The second TERM kills what is left, the third drops the output nobody
    // reads (README); brood then exits with its stdout still stalled.
    term();
    // Each TERM is acted on before the next is sent (two pending ones
    // would merge into one).
    brood.wait_stderr("the second TERM", |s| s.contains("second SIGTERM"));
    term();
    let gone = try_wait_for(Duration::from_secs(5), || !brood.is_running());
    assert!(gone, "brood blocked on a write{}", brood.stderr_str());
    brood.finish().assert_no_panic();
}

#[test]
fn interactive_counter_at_u64_max_refuses_more_spawns_instead_of_wrapping() {
    let out = Brood::new("counter-max")
        .opts(["-i", "--start", "18446744073709551614", "--grace", "1s"])
        .prog("true")
        .stdin("\n\n\n\n")
        .run();
    out.assert_no_panic();
    let counters: Vec<Option<u64>> = out.events_of("spawn").iter().map(|e| e["n"].as_u64()).collect();
    assert_eq!(
        counters,
        [Some(u64::MAX - 1), Some(u64::MAX)],
        "{}",
        out.context()
    );
    out.assert_stderr_contains("counter is at its maximum");
}
