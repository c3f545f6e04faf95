//! Process attributes (SPEC 17) and children's stdin under `brood run`:
//! `user`, `group` (with supplementary groups), `umask`, `nice`, `rlimits`
//! and `clear_env`, each read back from `/proc` of the running child; the
//! config errors they can give (with file:line:col, exit 2, nothing
//! started), including switching user without root; and stdin, a pipe brood
//! holds open (a watcher that quits at EOF keeps running until shutdown; it
//! leaks into no other child) or /dev/null with `stdin = "null"`.
//!
//! Tests that switch ids need root, as CI has: they fail saying so when run
//! without it, never pass silently. Every brood runs under the harness's
//! watchdog and cleanup guard, which kills what it started by process group.

mod util;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use util::*;

// ---------------------------------------------------------------------------
// Helpers

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn require_root(what: &str) {
    assert!(
        is_root(),
        "this test {what}: it needs root (CI runs `make test` as root)"
    );
}

/// `brood run --events EVENTS -f brood.toml` with `toml` as the config.
fn run_toml(name: &str, toml: &str) -> Brood {
    let brood = Brood::new(name);
    let config = brood.dir().join("brood.toml");
    std::fs::write(&config, toml).expect("write brood.toml");
    let events = brood.events_path();
    brood.raw_args([
        "run".into(),
        "--events".into(),
        events.into_os_string(),
        "-f".into(),
        config.into_os_string(),
    ])
}

/// Starts `toml` and returns the session and the pid of each spawned
/// child, in spawn order.
fn start_toml(name: &str, toml: &str, children: usize) -> (Running, Vec<i32>) {
    let running = run_toml(name, toml).start();
    let pids = running.wait_spawned(children);
    (running, pids)
}

/// The pid of the child with this label.
fn pid_of(running: &Running, label: &str) -> i32 {
    running.wait_events(&format!("a spawn of {label}"), |ev| {
        events_of(ev, "spawn").iter().any(|e| e["label"] == label)
    });
    events_of(&running.events(), "spawn")
        .iter()
        .find(|e| e["label"] == label)
        .and_then(|e| e["pid"].as_i64())
        .expect("pid") as i32
}

/// Stops brood with SIGTERM and checks it ended cleanly.
fn stop(running: Running) -> Output {
    running.signal(Signal::SIGTERM);
    let out = running.finish();
    out.assert_no_panic();
    out
}

/// A field of /proc/PID/status (`Uid`, `Groups`, ...), its words.
fn status_field(pid: i32, field: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// `id OPT USER`, as numbers.
fn id_of(opt: &str, user: &str) -> Vec<u32> {
    let out = Command::new("id").args([opt, user]).output().expect("run id");
    assert!(out.status.success(), "id {opt} {user} failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|w| w.parse().expect("a number from id"))
        .collect()
}

fn numbers(words: &[String]) -> BTreeSet<u32> {
    words.iter().map(|w| w.parse().expect("a number")).collect()
}

/// A user that is a member of some group besides its own (so its
/// supplementary groups show), else `nobody`.
fn user_with_supplementary_groups() -> String {
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    for line in groups.lines() {
        let members = line.rsplit(':').next().unwrap_or("");
        for member in members.split(',').filter(|m| !m.is_empty()) {
            let ok = Command::new("id")
                .arg(member)
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return member.to_string();
            }
        }
    }
    "nobody".to_string()
}

const SLEEPER: &str = "command = [\"/bin/sleep\", \"300\"]\n";

// ---------------------------------------------------------------------------
// Ids

#[test]
fn user_switches_uid_gid_and_supplementary_groups() {
    require_root("switches user");
    let user = user_with_supplementary_groups();
    let (running, pids) = start_toml(
        "attrs-user",
        &format!("[program.web]\n{SLEEPER}user = \"{user}\"\n"),
        1,
    );
    let pid = pids[0];
    let uid = id_of("-u", &user)[0].to_string();
    let gid = id_of("-g", &user)[0].to_string();
    assert_eq!(status_field(pid, "Uid"), [uid.as_str(); 4], "user {user}");
    assert_eq!(status_field(pid, "Gid"), [gid.as_str(); 4], "user {user}");
    let want: BTreeSet<u32> = id_of("-G", &user).into_iter().collect();
    assert_eq!(
        numbers(&status_field(pid, "Groups")),
        want,
        "the supplementary groups of {user} (as `id -G` lists them)"
    );
    stop(running).assert_code(0);
}

#[test]
fn group_replaces_the_primary_group_and_keeps_the_users_others() {
    require_root("switches user and group");
    let (running, pids) = start_toml(
        "attrs-group",
        &format!("[program.web]\n{SLEEPER}user = \"nobody\"\ngroup = \"daemon\"\n"),
        1,
    );
    let pid = pids[0];
    let daemon = id_of("-g", "daemon")[0].to_string();
    assert_eq!(status_field(pid, "Gid"), [daemon.as_str(); 4]);
    let primary = id_of("-g", "nobody")[0];
    let mut want: BTreeSet<u32> = id_of("-G", "nobody")
        .into_iter()
        .filter(|g| *g != primary)
        .collect();
    want.insert(daemon.parse().unwrap());
    assert_eq!(numbers(&status_field(pid, "Groups")), want);
    stop(running).assert_code(0);
}

#[test]
fn numeric_ids_without_entries_switch_when_group_is_given() {
    require_root("switches to uid 40000");
    let (running, pids) = start_toml(
        "attrs-numeric",
        &format!("[program.web]\n{SLEEPER}user = 40000\ngroup = 40001\n"),
        1,
    );
    let pid = pids[0];
    assert_eq!(status_field(pid, "Uid"), ["40000"; 4]);
    assert_eq!(status_field(pid, "Gid"), ["40001"; 4]);
    assert_eq!(status_field(pid, "Groups"), ["40001"]);
    stop(running).assert_code(0);
}

#[test]
fn group_alone_drops_broods_supplementary_groups() {
    require_root("switches group");
    let (running, pids) = start_toml(
        "attrs-group-alone",
        &format!("[program.web]\n{SLEEPER}group = 40002\n"),
        1,
    );
    let pid = pids[0];
    assert_eq!(status_field(pid, "Uid")[0], "0", "the uid stays brood's");
    assert_eq!(status_field(pid, "Gid"), ["40002"; 4]);
    assert_eq!(status_field(pid, "Groups"), ["40002"]);
    stop(running).assert_code(0);
}

// ---------------------------------------------------------------------------
// umask, nice, rlimits, clear_env

#[test]
fn umask_nice_and_rlimits_are_applied() {
    let (running, pids) = start_toml(
        "attrs-limits",
        &format!(
            "[program.web]\n{SLEEPER}umask = \"027\"\nnice = 7\n\
             rlimits = {{ nofile = {{ soft = 123, hard = 456 }}, core = 0, nproc = {{ soft = 300, hard = 400 }} }}\n"
        ),
        1,
    );
    let pid = pids[0];
    assert_eq!(status_field(pid, "Umask"), ["0027"]);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis; nice is field 19.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let nice = after.split_whitespace().nth(19 - 3).unwrap();
    assert_eq!(nice, "7", "/proc/{pid}/stat: {stat}");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let row = |name: &str| -> Vec<String> {
        let line = limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {limits}"));
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .map(str::to_owned)
            .collect()
    };
    // brood gives back the RLIMIT_NOFILE it started with; the config's wins.
    assert_eq!(row("Max open files"), ["123", "456"], "{limits}");
    assert_eq!(row("Max core file size"), ["0", "0"], "{limits}");
    assert_eq!(row("Max processes"), ["300", "400"], "{limits}");
    stop(running).assert_code(0);
}

#[test]
fn clear_env_starts_from_env_ps_and_port_only() {
    let toml = format!(
        "[program.clean]\n{SLEEPER}clear_env = true\nenv = {{ FOO = \"bar\" }}\n\
         [program.full]\n{SLEEPER}env = {{ FOO = \"bar\" }}\n"
    );
    let running = run_toml("attrs-clear-env", &toml)
        .env("BROOD_TEST_LEAK", "1")
        .start();
    running.wait_spawned(2);
    let environ = |label: &str| -> BTreeSet<String> {
        let pid = pid_of(&running, label);
        std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap()
            .split(|b| *b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    };
    let clean = environ("clean.1");
    let want: BTreeSet<String> = ["FOO=bar", "PS=clean.1", "PORT=5000"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(clean, want);
    let full = environ("full.1");
    assert!(
        full.contains("BROOD_TEST_LEAK=1"),
        "without clear_env brood's environment is kept: {full:?}"
    );
    assert!(full.contains("PS=full.1") && full.contains("FOO=bar"), "{full:?}");
    stop(running).assert_code(0);
}

// ---------------------------------------------------------------------------
// Config errors

/// `brood run` with `line` added to a program table fails with exit 2, a
/// message `CONFIG` + `want`, and starts nothing.
#[track_caller]
fn assert_config_error(line: &str, want: &str) {
    let brood = run_toml("attrs-error", &format!("[program.web]\n{SLEEPER}{line}\n"));
    let config = brood.dir().join("brood.toml").display().to_string();
    let out = brood.run();
    out.assert_code(2);
    assert!(
        out.stderr_str()
            .contains(&format!("brood: error: {config}{want}")),
        "{line}: want {want}{}",
        out.context()
    );
    assert!(
        out.events_of("spawn").is_empty(),
        "nothing may start{}",
        out.context()
    );
}

#[test]
fn unknown_user_and_group_are_config_errors_naming_them() {
    let cases = [
        (
            "user = \"no-such-user-x\"",
            ":3:8: program 'web': unknown user 'no-such-user-x'",
        ),
        (
            "group = \"no-such-group-x\"",
            ":3:9: program 'web': unknown group 'no-such-group-x'",
        ),
        (
            "user = 40000",
            ":3:8: program 'web': uid 40000 has no passwd entry, so no group: set group as well",
        ),
    ];
    for (line, want) in cases {
        assert_config_error(line, want);
    }
}

#[test]
fn bad_attribute_values_are_config_errors_with_positions() {
    let cases = [
        ("umask = \"0888\"", ":3:9: program 'web': invalid umask '0888'"),
        ("umask = 22", ":3:9: program 'web': umask must be an octal string"),
        (
            "nice = 20",
            ":3:8: program 'web': nice must be a number from -20 to 19",
        ),
        ("nice = \"low\"", ":3:8: program 'web': nice must be a number"),
        (
            "rlimits = { nofiles = 10 }",
            ":3:23: program 'web': unknown rlimit 'nofiles'",
        ),
        (
            "rlimits = { nofile = -1 }",
            ":3:22: program 'web': rlimits.nofile: a limit is a number",
        ),
        (
            "rlimits = { core = { soft = 2, hard = 1 } }",
            ":3:20: program 'web': rlimits.core: the soft limit is above the hard one",
        ),
        ("rlimits = 5", ":3:11: invalid type: integer `5`, expected a map"),
        (
            "clear_env = \"yes\"",
            ":3:13: invalid type: string \"yes\", expected a boolean",
        ),
        (
            "stdin = \"tty\"",
            ":3:9: program 'web': unknown stdin 'tty' (pipe or null)",
        ),
        (
            "user = \"a b\"",
            ":3:8: program 'web': user 'a b' is not a valid name",
        ),
        (
            "group = -1",
            ":3:9: program 'web': group must be a name or a number",
        ),
        ("usr = \"root\"", ":3:1: unknown field `usr`"),
    ];
    for (line, want) in cases {
        assert_config_error(line, want);
    }
}

#[test]
fn switching_user_without_root_is_a_config_error() {
    require_root("runs brood as uid 65534 with setpriv");
    for (line, want) in [
        (
            "user = \"daemon\"",
            ":3:8: program 'web': user = \"daemon\" needs root",
        ),
        ("group = 0", ":3:9: program 'web': group = 0 needs root"),
        (
            "rlimits = { nofile = \"infinity\" }",
            ":3:22: program 'web': rlimits.nofile asks for a hard limit of infinity",
        ),
    ] {
        let brood = Brood::new("attrs-nonroot");
        let config = brood.dir().join("brood.toml");
        std::fs::write(&config, format!("[program.web]\n{SLEEPER}{line}\n")).unwrap();
        let out = brood
            .shell(&format!(
                "exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$BROOD\" run -f '{}'",
                config.display()
            ))
            .run();
        out.assert_code(2);
        assert!(
            out.stderr_str().contains(&format!("{}{want}", config.display())),
            "{line}: want {want}{}",
            out.context()
        );
    }
    // Naming the user brood already is needs nothing switched.
    let brood = Brood::new("attrs-nonroot-self");
    let config = brood.dir().join("brood.toml");
    std::fs::write(
        &config,
        "[program.web]\ncommand = [\"/bin/true\"]\nrestart = \"never\"\nuser = \"nobody\"\n",
    )
    .unwrap();
    brood
        .shell(&format!(
            "exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$BROOD\" run -f '{}'",
            config.display()
        ))
        .run()
        .assert_code(0);
}

// ---------------------------------------------------------------------------
// stdin

/// The pipe inode behind `/proc/PID/fd/FD`, if it is a pipe.
fn pipe_of(pid: i32, fd: i32) -> Option<String> {
    let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let target = target.to_string_lossy().into_owned();
    target.starts_with("pipe:").then_some(target)
}

/// Every fd of `pid` that is `pipe`.
fn fds_on(pid: i32, pipe: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == pipe))
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

#[test]
fn a_watcher_that_exits_on_stdin_eof_keeps_running_until_shutdown() {
    let toml = "[program.watch]\nshell = \"cat >/dev/null; echo eof\"\n\
                [program.other]\ncommand = [\"/bin/sleep\", \"300\"]\n";
    let (running, _) = start_toml("attrs-stdin-pipe", toml, 2);
    let watch = pid_of(&running, "watch.1");
    let other = pid_of(&running, "other.1");
    let pipe = pipe_of(watch, 0).expect("the watcher's stdin is a pipe");
    assert!(
        holds_for(Duration::from_millis(500), || !process_dead(watch)
            && !running.stdout_str().contains("eof")),
        "the watcher saw EOF and exited{}",
        running.stdout_str()
    );
    // The write end is brood's alone, close-on-exec: no child holds it,
    // and the other child has no end of this pipe at all.
    assert_eq!(
        fds_on(other, &pipe),
        Vec::<i32>::new(),
        "leaked into another child"
    );
    assert!(
        !fds_on(running.pid(), &pipe).is_empty(),
        "brood holds the write end"
    );
    assert!(
        pipe_of(other, 0).is_some_and(|p| p != pipe),
        "each child has its own pipe"
    );
    let out = stop(running);
    out.assert_code(0);
    let exits = out.events_of("exit");
    let watch_exit = exits
        .iter()
        .find(|e| e["label"] == "watch.1")
        .expect("watch.1 exit");
    assert_eq!(
        watch_exit["signal"], "SIGTERM",
        "stopped by shutdown, not by EOF: {watch_exit}"
    );
}

#[test]
fn stdin_null_gives_eof_at_once() {
    let toml =
        "[program.watch]\nshell = \"cat >/dev/null; echo eof\"\nrestart = \"never\"\nstdin = \"null\"\n";
    let out = run_toml("attrs-stdin-null", toml).run();
    out.assert_code(0);
    assert!(out.stdout_str().contains("watch.1 | eof"), "{}", out.context());
}

#[test]
fn what_is_left_of_a_group_reads_eof_once_its_leader_is_reaped() {
    // The leader hands its stdin to a background job and exits; the job
    // reads until EOF, which comes when brood drops the pipe at the reap.
    let toml = "[program.leader]\n\
                shell = \"exec 3<&0; (cat <&3 >/dev/null; echo job-saw-eof) & exit 0\"\n\
                restart = \"never\"\n\
                [program.keep]\ncommand = [\"/bin/sleep\", \"300\"]\n";
    let (running, _) = start_toml("attrs-stdin-leader", toml, 2);
    running.wait_stdout("the job's EOF", |s| s.contains("job-saw-eof"));
    stop(running).assert_code(0);
}

#[test]
fn brood_spawn_children_still_get_dev_null() {
    let out = Brood::new("attrs-spawn-null")
        .opts(["-n", "1"])
        .prog("sh")
        .args([
            "-c",
            "ls -l /proc/self/fd/0 | grep -q /dev/null && cat && echo got-eof",
        ])
        .run();
    out.assert_code(0);
    assert!(out.stdout_str().contains("got-eof"), "{}", out.context());
}
