//! `brood init`: the exit-code matrix (0..=255 and 128+signal), exec
//! failures (127/126), signal forwarding to CMD (and to its group with
//! `-g`), reaping a zombie storm of orphans, stopping what CMD left behind
//! (SIGTERM, then SIGKILL after `--grace`), and brood as a real PID 1 in a
//! new PID namespace.
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

/// CMD starts a grandchild in its own process group (no job control in a
/// non-interactive bash); both trap USR1 and USR2 and say so. After CMD
/// gets USR1 it sends USR2 to the grandchild itself, and then waits for the
/// grandchild to report.
const FAMILY: &str = r#"
bash -c '
    trap "echo grandchild got USR1" USR1
    trap "echo grandchild got USR2; exit 0" USR2
    echo "grandchild $$"
    while :; do sleep 0.02; done
' &
gc=$!
# The pause lets a grandchild that got the group's USR1 report it first,
# even on a loaded machine.
trap 'echo cmd got USR1; sleep 0.3; kill -USR2 $gc' USR1
echo "cmd $$"
wait $gc
# wait returns early when a trapped signal arrives: wait again for the end.
while kill -0 $gc 2>/dev/null; do wait $gc; done
echo "cmd done"
exit 5
"#;

fn run_family(name: &str, group: bool) -> Output {
    let kills = KillOnFailure::default();
    let mut args = vec![];
    if group {
        args.push("-g");
    }
    args.extend(["--", "bash", "-c", FAMILY]);
    let brood = init(name, &args).start();
    brood.wait_stdout("CMD and grandchild ready", |s| {
        pid_after(s, "cmd ").is_some() && pid_after(s, "grandchild ").is_some()
    });
    let text = brood.stdout_str();
    kills.add(pid_after(&text, "cmd ").unwrap());
    kills.add(pid_after(&text, "grandchild ").unwrap());
    brood.signal(Signal::SIGUSR1);
    let out = brood.finish();
    out.assert_code(5).assert_no_panic();
    assert!(out.stdout_str().contains("cmd got USR1"), "{}", out.context());
    assert!(
        out.stdout_str().contains("grandchild got USR2"),
        "{}",
        out.context()
    );
    out
}

#[test]
fn with_g_a_forwarded_signal_reaches_a_grandchild_in_cmds_group() {
    let out = run_family("fwd-g", true);
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
fn without_g_a_forwarded_signal_reaches_cmd_only() {
    // bash runs pending traps in signal-number order, so a USR1 sent to the
    // group before CMD's own USR2 would be reported before it.
    let out = run_family("fwd-nog", false);
    assert!(
        !out.stdout_str().contains("grandchild got USR1"),
        "without -g only CMD may get the signal{}",
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
        eprintln!("SKIPPED as_pid_1_in_a_new_pid_namespace_reaps_orphans_and_passes_the_code: {why}");
        return;
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
