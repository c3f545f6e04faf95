//! `brood init`: the exit-code matrix (0..=255 and 128+signal), exec
//! failures (127/126), forwarding of every catchable signal to CMD (and to
//! its group with `-g`) with brood neither killed nor stopped, as PID 1 too,
//! the signal mask and ignored signals CMD inherits, reaping a zombie storm
//! of orphans, stopping what CMD left behind (SIGTERM, then SIGKILL after
//! the leftover grace), brood as a real PID 1 in a new PID namespace with
//! and without its own /proc, and tini's options and variables.
//!
//! Every brood runs in its own temp dir and process group under the
//! harness's watchdog (see `tests/util/mod.rs`). CMD runs in a process group
//! of its own, so each test also records the pids it learns (CMD,
//! grandchildren, leftovers) in a [`KillOnFailure`] guard that kills their
//! groups if the test fails.

mod util;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use util::*;

// ---------------------------------------------------------------------------
// Helpers

/// `brood init ARGS...` (ARGS include `--` and CMD) in a fresh temp dir.
fn init(name: &str, args: &[&str]) -> Brood {
    let mut argv: Vec<OsString> = vec!["init".into()];
    argv.extend(args.iter().map(OsString::from));
    Brood::new(name).raw_args(argv)
}

/// Pids whose process groups (and themselves) are SIGKILLed if the test
/// panics: CMD's group is not brood's, so the harness's guard (which kills
/// brood's group) would miss it.
#[derive(Default)]
struct KillOnFailure {
    pids: Mutex<Vec<i32>>,
}

impl KillOnFailure {
    fn add(&self, pid: i32) {
        self.pids.lock().unwrap().push(pid);
    }
}

impl Drop for KillOnFailure {
    fn drop(&mut self) {
        if thread::panicking() {
            for &pid in self.pids.lock().unwrap().iter() {
                if pid > 1 {
                    let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}

/// Writes an executable `/bin/sh` (or other) script into `dir`.
fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
    path
}

/// The pid that follows `prefix ` on some line of `text`.
fn pid_after(text: &str, prefix: &str) -> Option<i32> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.trim().parse().ok())
}

/// Whether the user can create PID namespaces here.
fn can_unshare_pid() -> Result<(), String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".into());
    }
    match Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "unshare --pid --fork --mount-proc true failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run unshare: {e}")),
    }
}

// ---------------------------------------------------------------------------
// Exit codes

#[test]
fn exit_code_matrix_0_to_255_is_passed_through() {
    const THREADS: i32 = 8;
    let failures = Mutex::new(Vec::new());
    thread::scope(|s| {
        for t in 0..THREADS {
            let failures = &failures;
            s.spawn(move || {
                for code in (t..256).step_by(THREADS as usize) {
                    let script = format!("exit {code}");
                    let out = init("codes", &["--", "/bin/sh", "-c", &script])
                        .watchdog(Duration::from_secs(20))
                        .run();
                    // Not assert_no_panic: 101 is one of the codes here.
                    let panicked = out.stderr_str().contains("panicked");
                    if out.code() != Some(code) || panicked {
                        failures.lock().unwrap().push(format!(
                            "exit {code}: brood exited {:?}{}",
                            out.code(),
                            out.context()
                        ));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} wrong codes:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn cmd_killed_by_a_signal_gives_128_plus_the_signal() {
    let cases = [
        ("TERM", libc::SIGTERM),
        ("KILL", libc::SIGKILL),
        ("INT", libc::SIGINT),
        ("SEGV", libc::SIGSEGV),
        ("ABRT", libc::SIGABRT),
    ];
    thread::scope(|s| {
        for (name, number) in cases {
            s.spawn(move || {
                let crash = script("crash");
                let out = init("sig", &["--", crash.to_str().unwrap(), name])
                    .watchdog(Duration::from_secs(20))
                    .run();
                out.assert_no_panic();
                assert_eq!(
                    out.code(),
                    Some(128 + number),
                    "CMD killed by SIG{name} must give {}{}",
                    128 + number,
                    out.context()
                );
            });
        }
    });
}

#[test]
fn exec_failure_not_found_exits_127() {
    let out = init("enoent", &["--", "/nonexistent/brood-test-cmd"]).run();
    out.assert_code(127).assert_no_panic().assert_stderr_contains(
        "brood: error: cannot exec '/nonexistent/brood-test-cmd': No such file or directory",
    );
}

#[test]
fn exec_failure_not_found_in_path_exits_127() {
    let out = init("enoent-path", &["--", "brood-test-no-such-command"]).run();
    out.assert_code(127)
        .assert_no_panic()
        .assert_stderr_contains("cannot exec 'brood-test-no-such-command'");
}

#[test]
fn exec_failure_not_executable_exits_126() {
    let files = TempDir::new("noexec");
    let path = files.join("not-executable");
    std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = path.to_str().unwrap();
    let out = init("eacces", &["--", p]).run();
    out.assert_code(126)
        .assert_no_panic()
        .assert_stderr_contains(&format!("brood: error: cannot exec '{p}': Permission denied"));
}

#[test]
fn exec_failure_directory_exits_126() {
    let files = TempDir::new("dir");
    let p = files.path().to_str().unwrap().to_owned();
    let out = init("eisdir", &["--", &p]).run();
    out.assert_code(126)
        .assert_no_panic()
        .assert_stderr_contains(&format!("cannot exec '{p}'"));
}

// ---------------------------------------------------------------------------
// Signal forwarding

/// CMD traps every forwarded signal, prints `got SIG` for each, and exits 0
/// after the seventh.
const TRAP_ALL: &str = r#"
n=0
for s in TERM INT HUP QUIT USR1 USR2 WINCH; do
    trap "echo got $s; n=\$((n + 1))" "$s"
done
echo "cmd $$"
while [ "$n" -lt 7 ]; do sleep 0.02; done
echo "all seven"
exit 0
"#;

#[test]
fn every_forwarded_signal_reaches_cmd() {
    let kills = KillOnFailure::default();
    let brood = init("fwd", &["--", "bash", "-c", TRAP_ALL]).start();
    brood.wait_stdout("CMD ready", |s| pid_after(s, "cmd ").is_some());
    let cmd = pid_after(&brood.stdout_str(), "cmd ").unwrap();
    kills.add(cmd);
    // TERM last: a missed forward there would end the test loudly, not hang it.
    let order = [
        ("INT", Signal::SIGINT),
        ("HUP", Signal::SIGHUP),
        ("QUIT", Signal::SIGQUIT),
        ("USR1", Signal::SIGUSR1),
        ("USR2", Signal::SIGUSR2),
        ("WINCH", Signal::SIGWINCH),
        ("TERM", Signal::SIGTERM),
    ];
    for (name, sig) in order {
        brood.signal(sig);
        let want = format!("got {name}");
        brood.wait_stdout(&want, |s| s.lines().any(|l| l == want));
    }
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert!(out.stdout_str().contains("all seven"), "{}", out.context());
    for name in ["TERM", "INT", "HUP", "QUIT", "USR1", "USR2", "WINCH"] {
        let n = out
            .stdout_lines()
            .iter()
            .filter(|l| **l == format!("got {name}"))
            .count();
        assert_eq!(n, 1, "SIG{name} must arrive exactly once{}", out.context());
    }
}

/// CMD starts a grandchild in its process group (no job control in a
/// non-interactive bash); both trap USR1 and say so, and the grandchild
/// ends on USR2, which the test sends it once CMD has reported its USR1.
const FAMILY: &str = r#"
bash -c '
    trap "echo grandchild got USR1" USR1
    trap "echo grandchild got USR2; exit 0" USR2
    echo "grandchild $$"
    while :; do sleep 0.02; done
' &
gc=$!
trap 'echo cmd got USR1' USR1
echo "cmd $$"
wait $gc
# wait returns early when a trapped signal arrives: wait again for the end.
while kill -0 $gc 2>/dev/null; do wait $gc; done
echo "cmd done"
exit 5
"#;

fn run_family(name: &str, opts: &[&str], env: &[(&str, &str)]) -> Output {
    let kills = KillOnFailure::default();
    let mut args = opts.to_vec();
    args.extend(["--", "bash", "-c", FAMILY]);
    let mut builder = init(name, &args);
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    let brood = builder.start();
    brood.wait_stdout("CMD and grandchild ready", |s| {
        pid_after(s, "cmd ").is_some() && pid_after(s, "grandchild ").is_some()
    });
    let text = brood.stdout_str();
    kills.add(pid_after(&text, "cmd ").unwrap());
    let grandchild = pid_after(&text, "grandchild ").unwrap();
    kills.add(grandchild);
    brood.signal(Signal::SIGUSR1);
    brood.wait_stdout("CMD's USR1", |s| s.lines().any(|l| l == "cmd got USR1"));
    // A group's USR1 was queued to the grandchild before CMD could report
    // its own, and bash runs pending traps in signal-number order: so a
    // USR1 it got is reported before this USR2.
    kill(Pid::from_raw(grandchild), Signal::SIGUSR2).unwrap();
    let out = brood.finish();
    out.assert_code(5).assert_no_panic();
    assert!(
        out.stdout_str().contains("grandchild got USR2"),
        "{}",
        out.context()
    );
    out
}

fn assert_group_got_usr1(out: &Output) {
    let lines = out.stdout_lines();
    let usr1 = lines.iter().position(|l| l == "grandchild got USR1");
    let usr2 = lines.iter().position(|l| l == "grandchild got USR2");
    assert!(
        usr1.is_some(),
        "with -g the grandchild must get USR1{}",
        out.context()
    );
    assert!(usr1 < usr2, "{}", out.context());
}

#[test]
fn with_g_a_forwarded_signal_reaches_a_grandchild_in_cmds_group() {
    assert_group_got_usr1(&run_family("fwd-g", &["-g"], &[]));
}

#[test]
fn tini_kill_process_group_variable_acts_as_g() {
    assert_group_got_usr1(&run_family(
        "fwd-tini-g",
        &[],
        &[("TINI_KILL_PROCESS_GROUP", "1")],
    ));
}

#[test]
fn without_g_a_forwarded_signal_reaches_cmd_only() {
    let out = run_family("fwd-nog", &[], &[]);
    assert!(
        !out.stdout_str().contains("grandchild got USR1"),
        "without -g only CMD may get the signal{}",
        out.context()
    );
}

/// Every signal a process can catch, but CHLD (brood's own) and the
/// synchronous faults (ILL, FPE, SEGV, BUS, ABRT), by number: HUP INT QUIT
/// TRAP USR1 USR2 PIPE ALRM TERM STKFLT CONT TSTP TTIN TTOU URG XCPU XFSZ
/// VTALRM PROF WINCH IO PWR SYS, then SIGRTMIN..SIGRTMAX.
fn catchable_signals() -> Vec<i32> {
    let mut sigs = vec![
        1, 2, 3, 5, 10, 12, 13, 14, 15, 16, 18, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
    ];
    sigs.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    sigs
}

/// A bash CMD that traps each of `sigs`, prints `got N` for each, and
/// exits 0 once the file `go` exists in its directory.
fn trap_every_signal_script(sigs: &[i32]) -> String {
    let list: Vec<String> = sigs.iter().map(|s| s.to_string()).collect();
    format!(
        r#"#!/bin/bash
n=0
for s in {list}; do trap "echo got $s; n=\$((n + 1))" $s; done
echo "cmd $$"
while [ ! -e go ]; do sleep 0.01; done
echo "all $n"
exit 0
"#,
        list = list.join(" ")
    )
}

/// Sends each of `sigs` to `brood_pid` (running CMD from
/// [`trap_every_signal_script`]), waiting for CMD to report it, and checks
/// after each that brood is alive and not stopped.
fn send_each_and_check_alive(brood: &Running, brood_pid: i32, sigs: &[i32]) {
    for &sig in sigs {
        assert_eq!(unsafe { libc::kill(brood_pid, sig) }, 0, "kill {sig}");
        let want = format!("got {sig}");
        brood.wait_stdout(&want, |s| s.lines().any(|l| l == want));
        let state = proc_state(brood_pid);
        assert!(
            matches!(state, Some(c) if c != 'T' && c != 't' && c != 'Z'),
            "after signal {sig} brood must be alive and not stopped (state {state:?}); stderr: {}",
            brood.stderr_str()
        );
    }
}

#[test]
fn every_catchable_signal_is_forwarded_and_none_kills_or_stops_brood() {
    let kills = KillOnFailure::default();
    let files = TempDir::new("fwd-all-files");
    let sigs = catchable_signals();
    let cmd = write_script(files.path(), "trap-all", &trap_every_signal_script(&sigs));
    let brood = init("fwd-all", &["--", cmd.to_str().unwrap()]).start();
    brood.wait_stdout("CMD ready", |s| pid_after(s, "cmd ").is_some());
    kills.add(pid_after(&brood.stdout_str(), "cmd ").unwrap());
    send_each_and_check_alive(&brood, brood.pid(), &sigs);
    std::fs::write(brood.dir().join("go"), "").unwrap();
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert!(
        out.stdout_str().contains(&format!("all {}\n", sigs.len())),
        "{}",
        out.context()
    );
    for sig in &sigs {
        let n = out
            .stdout_lines()
            .iter()
            .filter(|l| **l == format!("got {sig}"))
            .count();
        assert_eq!(n, 1, "signal {sig} must arrive exactly once{}", out.context());
    }
}

#[test]
fn as_pid_1_every_catchable_signal_is_forwarded_and_none_kills_or_stops_brood() {
    if let Err(why) = can_unshare_pid() {
        panic!("cannot create a PID namespace here: {why}");
    }
    let files = TempDir::new("fwd-pid1-files");
    let sigs = catchable_signals();
    let cmd = write_script(files.path(), "trap-all", &trap_every_signal_script(&sigs));
    let script = format!(
        "exec unshare --pid --fork --mount-proc \"$BROOD\" init -- '{}'",
        cmd.display()
    );
    let brood = Brood::new("fwd-pid1").shell(&script).start();
    brood.wait_stdout("CMD ready", |s| pid_after(s, "cmd ").is_some());
    assert_eq!(
        pid_after(&brood.stdout_str(), "cmd "),
        Some(2),
        "CMD must be PID 2"
    );
    // brood, PID 1 inside, is unshare's only child outside.
    let unshare = brood.pid();
    let kids = children_of(unshare);
    assert_eq!(kids.len(), 1, "unshare's children: {kids:?}");
    let brood_pid = kids[0].0;
    send_each_and_check_alive(&brood, brood_pid, &sigs);
    std::fs::write(brood.dir().join("go"), "").unwrap();
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
}

/// The `0x...` value of a `Sig...:` line of a `/proc/PID/status` text.
fn status_mask(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

fn mask_of(sigs: &[i32]) -> u64 {
    sigs.iter().fold(0, |m, &s| m | 1 << (s - 1))
}

#[test]
fn cmd_gets_an_empty_mask_and_no_ignored_signal_from_a_clean_parent() {
    // brood itself ignores SIGPIPE (Rust) and catches every forwarded
    // signal; none of that may reach CMD.
    let out = init("mask-clean", &["--", "grep", "^Sig", "/proc/self/status"]).run();
    out.assert_code(0).assert_no_panic();
    let text = out.stdout_str();
    assert_eq!(status_mask(&text, "SigBlk:"), Some(0), "{}", out.context());
    assert_eq!(status_mask(&text, "SigIgn:"), Some(0), "{}", out.context());
}

#[test]
fn cmd_inherits_broods_signal_mask_and_ignored_signals() {
    let rt1 = libc::SIGRTMIN() + 1;
    let rt2 = libc::SIGRTMIN() + 2;
    let blocked = [libc::SIGUSR1, libc::SIGTERM, rt1];
    // PIPE too: Rust ignores it at start-up, so brood must have recorded
    // its parent's choice before that.
    let ignored = [libc::SIGHUP, libc::SIGPIPE, libc::SIGINT, libc::SIGTTOU, rt2];
    let out = init("mask-inherit", &["--", "grep", "^Sig", "/proc/self/status"])
        .parent_signal_state(&blocked, &ignored)
        .run();
    out.assert_code(0).assert_no_panic();
    let text = out.stdout_str();
    assert_eq!(
        status_mask(&text, "SigBlk:"),
        Some(mask_of(&blocked)),
        "CMD must keep the mask brood inherited{}",
        out.context()
    );
    assert_eq!(
        status_mask(&text, "SigIgn:"),
        Some(mask_of(&ignored)),
        "CMD must keep the signals brood's parent ignored, and only those{}",
        out.context()
    );
}

#[test]
fn with_a_pipe_default_parent_cmd_gets_sigpipe_default() {
    // The record of SIGPIPE is per run: ignoring HUP only leaves PIPE default.
    let out = init("mask-pipe", &["--", "grep", "^SigIgn", "/proc/self/status"])
        .parent_signal_state(&[], &[libc::SIGHUP])
        .run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        status_mask(&out.stdout_str(), "SigIgn:"),
        Some(mask_of(&[libc::SIGHUP])),
        "{}",
        out.context()
    );
}

#[test]
fn brood_itself_unblocks_what_its_parent_blocked_and_still_forwards_it() {
    // The parent blocked USR2 and TERM; brood must still receive TERM and
    // forward it. CMD (`sleep`, which leaves its mask alone; a shell would
    // not) inherits TERM blocked, so the forwarded TERM stays pending there.
    let kills = KillOnFailure::default();
    let brood = init("mask-brood", &["--", "sleep", "1000"])
        .parent_signal_state(&[libc::SIGUSR2, libc::SIGTERM], &[])
        .start();
    let brood_pid = brood.pid();
    wait_for(DEADLINE, "CMD to run", || {
        children_of(brood_pid).first().is_some_and(|&(pid, _)| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == "sleep\n")
        })
    });
    let cmd_pid = children_of(brood_pid)[0].0;
    kills.add(cmd_pid);
    // brood blocks everything for a moment around each fork; after that
    // it runs with nothing blocked.
    wait_for(DEADLINE, "brood to run unblocked", || {
        std::fs::read_to_string(format!("/proc/{brood_pid}/status"))
            .ok()
            .and_then(|t| status_mask(&t, "SigBlk:"))
            == Some(0)
    });
    brood.signal(Signal::SIGTERM);
    wait_for(DEADLINE, "TERM pending in CMD", || {
        std::fs::read_to_string(format!("/proc/{cmd_pid}/status"))
            .ok()
            .and_then(|t| status_mask(&t, "ShdPnd:"))
            .is_some_and(|m| m & mask_of(&[libc::SIGTERM]) != 0)
    });
    kill(Pid::from_raw(cmd_pid), Signal::SIGKILL).unwrap();
    brood.finish().assert_code(137).assert_no_panic();
}

#[test]
fn under_nohup_cmd_keeps_sighup_ignored() {
    let out = Brood::new("nohup")
        .shell("exec nohup \"$BROOD\" init -- grep ^SigIgn /proc/self/status")
        .run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        status_mask(&out.stdout_str(), "SigIgn:"),
        Some(mask_of(&[libc::SIGHUP])),
        "{}",
        out.context()
    );
}

// ---------------------------------------------------------------------------
// Reaping

#[test]
fn orphans_of_cmd_are_reparented_to_brood_as_a_subreaper() {
    let kills = KillOnFailure::default();
    let files = TempDir::new("subreaper-files");
    let go = files.join("go");
    let body = format!(
        r#"#!/bin/sh
( sleep 1000 </dev/null >/dev/null 2>&1 & echo "orphan $!" )
while [ ! -e '{go}' ]; do sleep 0.02; done
exit 0
"#,
        go = go.display()
    );
    let cmd = write_script(files.path(), "orphaner", &body);
    let brood = init("subreaper", &["--", cmd.to_str().unwrap()]).start();
    brood.wait_stdout("the orphan's pid", |s| pid_after(s, "orphan ").is_some());
    let orphan = pid_after(&brood.stdout_str(), "orphan ").unwrap();
    kills.add(orphan);
    let brood_pid = brood.pid();
    wait_for(DEADLINE, "the orphan's parent to be brood", || {
        proc_ppid(orphan) == Some(brood_pid)
    });
    std::fs::write(&go, "").unwrap();
    let out = brood.finish();
    out.assert_code(0).assert_no_panic();
    assert!(
        process_dead(orphan),
        "the orphan must be stopped when CMD is gone{}",
        out.context()
    );
    assert!(
        !out.stderr_str().contains("subreaper"),
        "becoming a subreaper must not fail here{}",
        out.context()
    );
}

#[test]
fn zombie_storm_of_orphans_is_reaped_and_cmds_code_is_kept() {
    const ORPHANS: usize = 300;
    let kills = KillOnFailure::default();
    let files = TempDir::new("storm-files");
    let go = files.join("go");
    // `( /bin/true & )`: the subshell exits at once, so its child is an
    // orphan that brood (the subreaper) inherits and must reap.
    let body = format!(
        r#"#!/bin/sh
echo "cmd $$"
i=0
while [ "$i" -lt {ORPHANS} ]; do
    ( /bin/true & )
    i=$((i + 1))
done
echo "storm done"
while [ ! -e '{go}' ]; do sleep 0.02; done
exit 7
"#,
        go = go.display()
    );
    let cmd = write_script(files.path(), "storm", &body);
    let mut brood = init("storm", &["--", cmd.to_str().unwrap()]).start();
    brood.wait_stdout("CMD ready", |s| pid_after(s, "cmd ").is_some());
    let cmd_pid = pid_after(&brood.stdout_str(), "cmd ").unwrap();
    kills.add(cmd_pid);
    brood.wait_stdout("the storm", |s| s.contains("storm done"));
    let brood_pid = brood.pid();
    let settled = try_wait_for(DEADLINE, || {
        let kids = children_of(brood_pid);
        kids.iter().all(|&(_, state)| state != 'Z') && kids.len() == 1
    });
    let kids = children_of(brood_pid);
    assert!(
        settled,
        "after the storm brood must have reaped every orphan (only CMD {cmd_pid} left); children: {kids:?}"
    );
    assert!(brood.is_running());
    std::fs::write(&go, "").unwrap();
    let out = brood.finish();
    out.assert_code(7).assert_no_panic();
}

#[test]
fn leftovers_ignoring_term_are_killed_after_the_grace() {
    let kills = KillOnFailure::default();
    let files = TempDir::new("leftover-files");
    let out_file = files.join("stubborn.out");
    let err_file = files.join("stubborn.err");
    // CMD leaves `stubborn` (which ignores SIGTERM) behind once its trap is
    // in place, and exits 3.
    let body = format!(
        r#"#!/bin/sh
'{stubborn}' >'{out}' 2>'{err}' </dev/null &
echo "leftover $!"
until grep -q ready '{out}' 2>/dev/null; do sleep 0.01; done
exit 3
"#,
        stubborn = script("stubborn").display(),
        out = out_file.display(),
        err = err_file.display()
    );
    let cmd = write_script(files.path(), "leaver", &body);
    let brood = init("leftover", &["--grace", "500ms", "--", cmd.to_str().unwrap()]).start();
    brood.wait_stdout("the leftover's pid", |s| pid_after(s, "leftover ").is_some());
    let leftover = pid_after(&brood.stdout_str(), "leftover ").unwrap();
    kills.add(leftover);
    let out = brood.finish();
    out.assert_code(3).assert_no_panic();
    assert!(
        process_dead(leftover),
        "the TERM-ignoring leftover {leftover} must be gone once brood has exited{}",
        out.context()
    );
    let err = std::fs::read_to_string(&err_file).unwrap_or_default();
    assert!(
        err.contains("ignoring TERM"),
        "the leftover must get SIGTERM first (its stderr: {err:?}){}",
        out.context()
    );
    assert!(
        out.elapsed >= Duration::from_millis(450),
        "SIGKILL must wait for the grace (500ms){}",
        out.context()
    );
    assert!(out.elapsed < Duration::from_secs(5), "{}", out.context());
}

#[test]
fn leftovers_that_obey_term_end_without_waiting_for_the_grace() {
    let kills = KillOnFailure::default();
    let brood = init(
        "leftover-term",
        &[
            "--grace",
            "20s",
            "--",
            "/bin/sh",
            "-c",
            "sleep 1000 </dev/null >/dev/null 2>&1 & echo \"leftover $!\"; exit 4",
        ],
    )
    .start();
    brood.wait_stdout("the leftover's pid", |s| pid_after(s, "leftover ").is_some());
    let leftover = pid_after(&brood.stdout_str(), "leftover ").unwrap();
    kills.add(leftover);
    let started = Instant::now();
    let out = brood.finish();
    out.assert_code(4).assert_no_panic();
    assert!(process_dead(leftover), "{}", out.context());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a leftover that dies of SIGTERM must not hold brood for the 20s grace{}",
        out.context()
    );
}

#[test]
fn on_a_terminal_cmd_gets_the_foreground() {
    // CMD compares the terminal's foreground group with its own group.
    let check = r#"fg=$(ps -o tpgid= -p $$ | tr -d ' '); me=$(ps -o pgid= -p $$ | tr -d ' '); if [ "$fg" = "$me" ]; then echo "foreground yes"; else echo "foreground no ($fg vs $me)"; fi; exit 9"#;
    let session = Brood::new("init-tty")
        .raw_args(["init", "--", "/bin/sh", "-c", check])
        .start_pty();
    let (status, terminal, _) = session.finish();
    assert_eq!(status.code(), Some(9), "terminal:\n{terminal}");
    assert!(
        terminal.contains("foreground yes"),
        "CMD must own the terminal's foreground:\n{terminal}"
    );
}

// ---------------------------------------------------------------------------
// PID 1

#[test]
fn as_pid_1_in_a_new_pid_namespace_reaps_orphans_and_passes_the_code() {
    if let Err(why) = can_unshare_pid() {
        panic!("cannot create a PID namespace here: {why}");
    }
    // Inside the namespace: brood is PID 1, CMD is PID 2. CMD leaves 50
    // orphans, then waits (with a deadline) until no zombie is left.
    let inner = r#"
echo "cmd pid $$"
echo "pid 1 is $(cat /proc/1/comm)"
i=0
while [ "$i" -lt 50 ]; do ( /bin/true & ); i=$((i + 1)); done
tries=0
while :; do
    z=$(grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l)
    [ "$z" -eq 0 ] && break
    tries=$((tries + 1))
    [ "$tries" -ge 500 ] && break
    sleep 0.01
done
echo "zombies $z"
exit 42
"#;
    let files = TempDir::new("pid1-files");
    let cmd = write_script(files.path(), "inner", &format!("#!/bin/sh\n{inner}"));
    let script = format!(
        "exec unshare --pid --fork --mount-proc \"$BROOD\" init -- '{}'",
        cmd.display()
    );
    let out = Brood::new("pid1").shell(&script).run();
    out.assert_code(42).assert_no_panic();
    let stdout = out.stdout_str();
    assert!(
        stdout.contains("cmd pid 2\n"),
        "CMD must be PID 2{}",
        out.context()
    );
    assert!(
        stdout.contains("pid 1 is brood\n"),
        "brood must be PID 1{}",
        out.context()
    );
    assert!(
        stdout.contains("zombies 0\n"),
        "brood as PID 1 must reap the orphans{}",
        out.context()
    );
    assert!(
        !out.stderr_str().contains("subreaper"),
        "PID 1 has no reason to warn about subreaping{}",
        out.context()
    );
}

/// A CMD script that leaves `stubborn` (TERM-ignoring, its stderr in
/// `err`) behind once its trap is set, prints `leftover PID`, and exits 3.
fn leaver_script(files: &TempDir) -> (PathBuf, PathBuf) {
    let out_file = files.join("stubborn.out");
    let err_file = files.join("stubborn.err");
    let body = format!(
        r#"#!/bin/sh
'{stubborn}' >'{out}' 2>'{err}' </dev/null &
echo "leftover $!"
until grep -q ready '{out}' 2>/dev/null; do sleep 0.01; done
exit 3
"#,
        stubborn = script("stubborn").display(),
        out = out_file.display(),
        err = err_file.display()
    );
    (write_script(files.path(), "leaver", &body), err_file)
}

#[test]
fn as_pid_1_without_its_own_proc_leftovers_get_term_then_kill_and_brood_exits() {
    if let Err(why) = can_unshare_pid() {
        panic!("cannot create a PID namespace here: {why}");
    }
    // /proc is the host's: brood must not look its leftovers up there.
    let files = TempDir::new("pid1-noproc-files");
    let (cmd, err_file) = leaver_script(&files);
    let script = format!(
        "exec unshare --pid --fork \"$BROOD\" init --leftover-grace 1s -- '{}'",
        cmd.display()
    );
    // brood's group holds unshare and brood; when brood (the namespace's
    // init) dies, the kernel kills everything in the namespace.
    let out = Brood::new("pid1-noproc")
        .shell(&script)
        .watchdog(Duration::from_secs(20))
        .run();
    out.assert_code(3).assert_no_panic();
    let err = std::fs::read_to_string(&err_file).unwrap_or_default();
    assert!(
        err.contains("ignoring TERM"),
        "the leftover must get SIGTERM (its stderr: {err:?}){}",
        out.context()
    );
    assert!(
        out.elapsed >= Duration::from_millis(900) && out.elapsed < Duration::from_secs(6),
        "SIGKILL after the 1s leftover grace (long enough for a loaded machine to run the leftover's TERM trap), and no hang{}",
        out.context()
    );
    assert!(!out.stderr_str().contains("cannot be found"), "{}", out.context());
}

#[test]
fn as_a_subreaper_under_a_foreign_proc_leftovers_are_found_by_their_namespace_pid() {
    if let Err(why) = can_unshare_pid() {
        panic!("cannot create a PID namespace here: {why}");
    }
    // bash is PID 1 of the namespace, brood PID 2, /proc the host's: the
    // leftovers are found in it and signalled by their namespace pids.
    let files = TempDir::new("sub-noproc-files");
    let (cmd, err_file) = leaver_script(&files);
    let script = format!(
        "exec unshare --pid --fork bash -c '\"$BROOD\" init --leftover-grace 1s -- {}; code=$?; exit $code'",
        cmd.display()
    );
    let out = Brood::new("sub-noproc")
        .shell(&script)
        .watchdog(Duration::from_secs(20))
        .run();
    out.assert_code(3).assert_no_panic();
    let err = std::fs::read_to_string(&err_file).unwrap_or_default();
    assert!(
        err.contains("ignoring TERM"),
        "the leftover must get SIGTERM (its stderr: {err:?}){}",
        out.context()
    );
    assert!(out.elapsed < Duration::from_secs(6), "{}", out.context());
    assert!(!out.stderr_str().contains("cannot be found"), "{}", out.context());
}

// ---------------------------------------------------------------------------
// Leftover grace

#[test]
fn leftover_grace_defaults_to_one_second() {
    let kills = KillOnFailure::default();
    let files = TempDir::new("grace-default-files");
    let (cmd, err_file) = leaver_script(&files);
    let brood = init("grace-default", &["--", cmd.to_str().unwrap()]).start();
    brood.wait_stdout("the leftover's pid", |s| pid_after(s, "leftover ").is_some());
    let leftover = pid_after(&brood.stdout_str(), "leftover ").unwrap();
    kills.add(leftover);
    let out = brood.finish();
    out.assert_code(3).assert_no_panic();
    assert!(process_dead(leftover), "{}", out.context());
    let err = std::fs::read_to_string(&err_file).unwrap_or_default();
    assert!(err.contains("ignoring TERM"), "{err:?}{}", out.context());
    assert!(
        out.elapsed >= Duration::from_millis(900) && out.elapsed < Duration::from_secs(4),
        "a TERM-ignoring leftover is killed after the 1s default, not --grace's 5s{}",
        out.context()
    );
}

#[test]
fn leftover_grace_option_sets_the_wait() {
    let kills = KillOnFailure::default();
    let files = TempDir::new("grace-opt-files");
    let (cmd, _) = leaver_script(&files);
    let brood = init(
        "grace-opt",
        &["--leftover-grace", "2500ms", "--", cmd.to_str().unwrap()],
    )
    .start();
    brood.wait_stdout("the leftover's pid", |s| pid_after(s, "leftover ").is_some());
    kills.add(pid_after(&brood.stdout_str(), "leftover ").unwrap());
    let out = brood.finish();
    out.assert_code(3).assert_no_panic();
    assert!(
        out.elapsed >= Duration::from_millis(2400),
        "SIGKILL must wait for the 2.5s leftover grace{}",
        out.context()
    );
}

// ---------------------------------------------------------------------------
// tini's options and variables

#[test]
fn options_before_cmd_parse_with_and_without_double_dash() {
    for args in [
        &["-s", "-g", "sh", "-c", "exit 4"][..],
        &["sh", "-c", "exit 4"][..],
        &["-g", "--", "sh", "-c", "exit 4"][..],
        &["-s", "--", "sh", "-c", "exit 4"][..],
        &["-s", "-w", "-v", "-e", "9", "sh", "-c", "exit 4"][..],
    ] {
        let out = init("parse", args).run();
        out.assert_no_panic();
        assert_eq!(out.code(), Some(4), "brood init {args:?}{}", out.context());
    }
}

#[test]
fn options_after_cmd_belong_to_cmd() {
    let out = init("parse-after", &["sh", "-c", "echo \"$0 $1\"", "-g", "-e"]).run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(out.stdout_str(), "-g -e\n", "{}", out.context());
}

#[test]
fn e_remaps_each_given_code_to_zero_and_passes_others() {
    for (script, args, want) in [
        ("exit 3", &["-e", "3"][..], 0),
        ("exit 3", &["-e", "4", "-e", "3"][..], 0),
        ("exit 4", &["-e", "3"][..], 4),
        ("kill -TERM $$", &["-e", "143"][..], 0),
        ("kill -TERM $$", &["-e", "15"][..], 143),
        ("exit 0", &["-e", "3"][..], 0),
    ] {
        let mut argv = args.to_vec();
        argv.extend(["--", "sh", "-c", script]);
        let out = init("remap", &argv).run();
        out.assert_no_panic();
        assert_eq!(out.code(), Some(want), "brood init {argv:?}{}", out.context());
    }
}

#[test]
fn e_outside_0_to_255_is_a_usage_error() {
    let out = init("remap-bad", &["-e", "256", "--", "true"]).run();
    out.assert_code(2).assert_no_panic();
}

#[test]
fn l_prints_the_license_and_exits_0() {
    let out = init("license", &["-l"]).run();
    out.assert_code(0).assert_no_panic();
    assert!(out.stdout_str().contains("MIT license"), "{}", out.context());
}

#[test]
fn version_under_init_prints_the_version() {
    let out = init("version", &["--version"]).run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        out.stdout_str(),
        format!("brood {}\n", env!("CARGO_PKG_VERSION")),
        "{}",
        out.context()
    );
}

#[test]
fn w_warns_on_each_reaped_zombie_and_is_quiet_without() {
    let orphan = "( /bin/true & ); ( /bin/true & ); exit 0";
    let out = init("warn-reap", &["-w", "--", "sh", "-c", orphan]).run();
    out.assert_code(0).assert_no_panic();
    let warnings = out
        .stderr_lines()
        .iter()
        .filter(|l| l.starts_with("brood: warning: reaped zombie process with pid "))
        .count();
    assert_eq!(warnings, 2, "one warning per orphan{}", out.context());
    let out = init("no-warn-reap", &["--", "sh", "-c", orphan]).run();
    out.assert_code(0).assert_no_panic();
    assert!(!out.stderr_str().contains("reaped zombie"), "{}", out.context());
}

#[test]
fn v_and_tini_verbosity_raise_and_lower_brood_messages() {
    let debug = "brood: debug: started true";
    let out = init("verbose", &["-v", "--", "true"]).run();
    out.assert_code(0).assert_stderr_contains(debug);
    let out = init("verbose-env", &["--", "true"])
        .env("TINI_VERBOSITY", "3")
        .run();
    out.assert_code(0).assert_stderr_contains(debug);
    let out = init("verbose-default", &["--", "true"]).run();
    out.assert_code(0);
    assert!(!out.stderr_str().contains(debug), "{}", out.context());
    // 0: errors only, so -w's warnings are gone.
    let out = init("verbose-0", &["-w", "--", "sh", "-c", "( /bin/true & )"])
        .env("TINI_VERBOSITY", "0")
        .run();
    out.assert_code(0);
    assert!(!out.stderr_str().contains("warning"), "{}", out.context());
}

#[test]
fn tini_subreaper_variable_is_accepted_and_brood_is_a_subreaper() {
    let kills = KillOnFailure::default();
    let files = TempDir::new("tini-sub-files");
    let go = files.join("go");
    let body = format!(
        "#!/bin/sh\n( sleep 1000 </dev/null >/dev/null 2>&1 & echo \"orphan $!\" )\nwhile [ ! -e '{}' ]; do sleep 0.02; done\n",
        go.display()
    );
    let cmd = write_script(files.path(), "orphaner", &body);
    let brood = init("tini-sub", &["-s", "--", cmd.to_str().unwrap()])
        .env("TINI_SUBREAPER", "")
        .start();
    brood.wait_stdout("the orphan's pid", |s| pid_after(s, "orphan ").is_some());
    let orphan = pid_after(&brood.stdout_str(), "orphan ").unwrap();
    kills.add(orphan);
    let brood_pid = brood.pid();
    wait_for(DEADLINE, "the orphan's parent to be brood", || {
        proc_ppid(orphan) == Some(brood_pid)
    });
    std::fs::write(&go, "").unwrap();
    brood.finish().assert_code(0).assert_no_panic();
    assert!(process_dead(orphan));
}

#[test]
fn p_gives_brood_a_parent_death_signal_that_it_forwards() {
    // bash starts brood in the background with -p SIGUSR1 and exits once
    // CMD is ready: brood gets USR1 and forwards it; CMD exits on it.
    let kills = KillOnFailure::default();
    let files = TempDir::new("pdeath-files");
    let go = files.join("go");
    let cmd = write_script(
        files.path(),
        "waiter",
        "#!/bin/bash\ntrap 'echo cmd got USR1; exit 0' USR1\necho \"cmd $$\"\nwhile :; do sleep 0.02; done\n",
    );
    let script = format!(
        "\"$BROOD\" init -p SIGUSR1 -- '{cmd}' & echo \"brood $!\"; while [ ! -e '{go}' ]; do sleep 0.02; done; exit 0",
        cmd = cmd.display(),
        go = go.display()
    );
    let brood = Brood::new("pdeath").shell(&script).start();
    brood.wait_stdout("brood and CMD ready", |s| {
        pid_after(s, "brood ").is_some() && pid_after(s, "cmd ").is_some()
    });
    let text = brood.stdout_str();
    let brood_pid = pid_after(&text, "brood ").unwrap();
    kills.add(brood_pid);
    kills.add(pid_after(&text, "cmd ").unwrap());
    std::fs::write(&go, "").unwrap();
    brood.wait_stdout("CMD's USR1", |s| s.lines().any(|l| l == "cmd got USR1"));
    wait_for(DEADLINE, "brood to exit", || process_dead(brood_pid));
    brood.finish().assert_code(0).assert_no_panic();
}

#[test]
fn p_with_an_unknown_signal_is_a_usage_error() {
    let out = init("pdeath-bad", &["-p", "SIGNOPE", "--", "true"]).run();
    out.assert_code(2)
        .assert_no_panic()
        .assert_stderr_contains("brood: error: -p: unknown signal 'SIGNOPE'");
}
