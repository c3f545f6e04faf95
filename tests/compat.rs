//! brood against foreman and honcho: the same Procfile and `.env` give the
//! same processes (issue 13). `VAR=value` and `exec` lines, `.env` PORT as
//! the base port, `-e` replacing `.env` (lists and repeats), `-c` lists,
//! `=0` and `all=`, `PROCFILE`, `brood exec` (foreman's `run`), `brood
//! check`, and prefix colors by program.
//!
//! Every test runs the real binary in its own temp dir and process group,
//! under the harness's watchdog and cleanup guard (`tests/util/mod.rs`),
//! which kills by process group whatever a failed test left behind.

mod util;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;

use util::*;

/// `brood ARGS...` (no `run`, no events) in a fresh temp dir holding `files`.
fn brood_in(name: &str, files: &[(&str, &str)], args: &[&str]) -> Brood {
    with_files(name, files).raw_args(args)
}

fn with_files(name: &str, files: &[(&str, &str)]) -> Brood {
    let brood = Brood::new(name);
    for (file, text) in files {
        std::fs::write(brood.dir().join(file), text).expect("write a test file");
    }
    brood
}

/// label -> the text of its lines, joined by `\n`.
fn lines_by_label(out: &Output) -> BTreeMap<String, String> {
    let mut by = BTreeMap::<String, String>::new();
    for line in out.stdout_lines() {
        if let Some((label, text)) = split_prefixed(&line) {
            let entry = by.entry(label.to_owned()).or_default();
            if !entry.is_empty() {
                entry.push('\n');
            }
            entry.push_str(text);
        }
    }
    by
}

/// The pid of each label's (first) spawn.
fn spawn_pids(out: &Output) -> BTreeMap<String, i64> {
    let mut pids = BTreeMap::new();
    for e in out.events_of("spawn") {
        let label = e["label"].as_str().expect("label").to_owned();
        pids.entry(label).or_insert(e["pid"].as_i64().expect("pid"));
    }
    pids
}

fn labels(out: &Output) -> Vec<String> {
    spawn_pids(out).into_keys().collect()
}

// ---------------------------------------------------------------------------
// Procfile lines

#[test]
fn procfile_line_with_leading_assignment_runs_execed_with_the_variable() {
    // Mastodon's and cookiecutter-django's `worker: VAR=value cmd`: this
    // failed with `exec: VAR=value: not found`, exit 127, restarted forever.
    let out = run_in(
        "assign-line",
        &[(
            "Procfile",
            "worker: REMAP_SIDEKIQ_QUEUE=1 QUOTED=\"a b\" sh -c 'echo \"remap=$REMAP_SIDEKIQ_QUEUE quoted=$QUOTED pid=$$\"'\n",
        )],
        &[],
    )
    .run();
    out.assert_code(0).assert_no_panic();
    let pid = spawn_pids(&out)["worker.1"];
    assert_eq!(
        lines_by_label(&out).get("worker.1").map(String::as_str),
        Some(format!("remap=1 quoted=a b pid={pid}").as_str()),
        "the variables reach the program, which is the process brood started (exec'd){}",
        out.context()
    );
}

#[test]
fn procfile_line_starting_with_exec_runs() {
    let out = run_in(
        "exec-line",
        &[(
            "Procfile",
            "web: exec sh -c 'echo \"pid=$$\"'\nworker: A=2 exec sh -c 'echo \"a=$A pid=$$\"'\n",
        )],
        &[],
    )
    .run();
    out.assert_code(0).assert_no_panic();
    let pids = spawn_pids(&out);
    let lines = lines_by_label(&out);
    assert_eq!(
        lines.get("web.1"),
        Some(&format!("pid={}", pids["web.1"])),
        "{}",
        out.context()
    );
    assert_eq!(
        lines.get("worker.1"),
        Some(&format!("a=2 pid={}", pids["worker.1"])),
        "{}",
        out.context()
    );
    assert!(
        out.events_of("exit").iter().all(|e| e["code"] == 0),
        "{}",
        out.context()
    );
}

// ---------------------------------------------------------------------------
// PORT

const PORT_PROCFILE: &str = "web: echo \"port=$PORT\"\nworker: echo \"port=$PORT\"\n";

#[test]
fn dotenv_port_is_the_base_port_not_every_instances_port() {
    let out = run_in(
        "dotenv-port",
        &[("Procfile", PORT_PROCFILE), (".env", "PORT=4300\n")],
        &["-c", "web=2"],
    )
    .run();
    out.assert_code(0).assert_no_panic();
    let lines = lines_by_label(&out);
    let want: BTreeMap<String, String> = [
        ("web.1", "port=4300"),
        ("web.2", "port=4301"),
        ("worker.1", "port=4400"),
    ]
    .into_iter()
    .map(|(l, t)| (l.to_owned(), t.to_owned()))
    .collect();
    assert_eq!(lines, want, "{}", out.context());
}

#[test]
fn environment_port_is_the_base_and_a_programs_own_port_is_kept() {
    let toml = "[program.api]\nshell = 'echo \"port=$PORT\"'\nnumprocs = 2\nenv = { PORT = 9000 }\n\n\
                [program.web]\nshell = 'echo \"port=$PORT\"'\nnumprocs = 2\n";
    let out = run_in("env-port", &[("brood.toml", toml)], &[])
        .env("PORT", "4300")
        .run();
    out.assert_code(0).assert_no_panic();
    let lines = lines_by_label(&out);
    let want: BTreeMap<String, String> = [
        ("api.1", "port=9000"),
        ("api.2", "port=9000"),
        ("web.1", "port=4400"),
        ("web.2", "port=4401"),
    ]
    .into_iter()
    .map(|(l, t)| (l.to_owned(), t.to_owned()))
    .collect();
    assert_eq!(lines, want, "{}", out.context());
}

#[test]
fn port_option_wins_over_dotenv_port() {
    let out = run_in(
        "port-option",
        &[("Procfile", PORT_PROCFILE), (".env", "PORT=4300\n")],
        &["-p", "6000"],
    )
    .run();
    out.assert_code(0).assert_no_panic();
    let lines = lines_by_label(&out);
    assert_eq!(
        lines.get("web.1").map(String::as_str),
        Some("port=6000"),
        "{}",
        out.context()
    );
    assert_eq!(
        lines.get("worker.1").map(String::as_str),
        Some("port=6100"),
        "{}",
        out.context()
    );
}

#[test]
fn dotenv_port_that_is_not_a_number_is_a_config_error() {
    let out = run_in(
        "bad-port",
        &[("Procfile", "web: touch ran-marker\n"), (".env", "PORT=web\n")],
        &[],
    )
    .run();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains("brood: error: PORT in an env file must be a port number, not 'web'");
    assert!(out.events_of("spawn").is_empty(), "{}", out.context());
}

// ---------------------------------------------------------------------------
// -e

const ENV_FILES: &[(&str, &str)] = &[
    (
        "Procfile",
        "web: echo \"dotenv=$FROM_DOTENV a=$FROM_A b=$FROM_B both=$BOTH\"\n",
    ),
    (".env", "FROM_DOTENV=yes\nBOTH=dotenv\n"),
    ("a.env", "FROM_A=yes\nBOTH=a\n"),
    ("b.env", "FROM_B=yes\nBOTH=b\n"),
];

#[test]
fn env_option_replaces_the_default_dotenv() {
    let out = run_in("e-replaces", ENV_FILES, &["-e", "a.env"]).run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        lines_by_label(&out).get("web.1").map(String::as_str),
        Some("dotenv= a=yes b= both=a"),
        "{}",
        out.context()
    );
}

#[test]
fn env_option_takes_a_comma_list_and_the_later_file_wins() {
    let out = run_in("e-list", ENV_FILES, &["-e", "a.env,b.env"]).run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        lines_by_label(&out).get("web.1").map(String::as_str),
        Some("dotenv= a=yes b=yes both=b"),
        "{}",
        out.context()
    );
}

#[test]
fn env_option_may_repeat() {
    let out = run_in("e-repeat", ENV_FILES, &["-e", "b.env", "--env", "a.env"]).run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        lines_by_label(&out).get("web.1").map(String::as_str),
        Some("dotenv= a=yes b=yes both=a"),
        "{}",
        out.context()
    );
}

// ---------------------------------------------------------------------------
// -c

const THREE: &str = "web: echo web\nworker: echo worker\nclock: echo clock\n";

#[test]
fn scale_takes_a_comma_list() {
    let out = run_in("c-list", &[("Procfile", THREE)], &["-c", "web=2,worker=3"]).run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        labels(&out),
        ["clock.1", "web.1", "web.2", "worker.1", "worker.2", "worker.3"],
        "{}",
        out.context()
    );
}

#[test]
fn scale_zero_leaves_the_program_out_and_keeps_the_others_ports() {
    let procfile = "web: echo \"port=$PORT\"\nworker: echo \"port=$PORT\"\nclock: echo \"port=$PORT\"\n";
    let out = run_in(
        "c-zero",
        &[("Procfile", procfile)],
        &["-c", "worker=0", "-p", "5000"],
    )
    .run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(labels(&out), ["clock.1", "web.1"], "{}", out.context());
    let lines = lines_by_label(&out);
    assert_eq!(
        lines.get("clock.1").map(String::as_str),
        Some("port=5200"),
        "{}",
        out.context()
    );
}

#[test]
fn scale_all_sets_every_program_and_a_named_value_wins() {
    let out = run_in("c-all", &[("Procfile", THREE)], &["-c", "web=1,all=2"]).run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        labels(&out),
        ["clock.1", "clock.2", "web.1", "worker.1", "worker.2"],
        "{}",
        out.context()
    );
}

#[test]
fn scale_everything_to_zero_is_a_usage_error() {
    let out = run_in("c-none", &[("Procfile", THREE)], &["-c", "all=0"]).run();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains("brood: error: nothing to run");
}

#[test]
fn scale_of_an_unknown_program_is_a_usage_error() {
    let out = run_in("c-unknown", &[("Procfile", THREE)], &["-c", "web=2,nope=1"]).run();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains("brood: error: -c: no program 'nope'");
    assert!(out.events_of("spawn").is_empty(), "{}", out.context());
}

// ---------------------------------------------------------------------------
// PROCFILE

const DEV_FILES: &[(&str, &str)] = &[
    ("Procfile", "web: echo production\n"),
    ("Procfile.dev", "web: echo development\n"),
];

#[test]
fn procfile_variable_in_dotenv_names_the_procfile() {
    let mut files = DEV_FILES.to_vec();
    files.push((".env", "PROCFILE=Procfile.dev\n"));
    let out = run_in("procfile-dotenv", &files, &[]).run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        lines_by_label(&out).get("web.1").map(String::as_str),
        Some("development"),
        "{}",
        out.context()
    );
}

#[test]
fn procfile_variable_in_the_environment_names_the_procfile() {
    let out = run_in("procfile-env", DEV_FILES, &[])
        .env("PROCFILE", "Procfile.dev")
        .run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        lines_by_label(&out).get("web.1").map(String::as_str),
        Some("development"),
        "{}",
        out.context()
    );
}

#[test]
fn file_option_wins_over_procfile_variable() {
    let out = run_in("procfile-f", DEV_FILES, &["-f", "Procfile"])
        .env("PROCFILE", "Procfile.dev")
        .run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        lines_by_label(&out).get("web.1").map(String::as_str),
        Some("production"),
        "{}",
        out.context()
    );
}

// ---------------------------------------------------------------------------
// brood exec

const APP: &[(&str, &str)] = &[
    ("Procfile", "web: echo \"web sees $GREETING\"\n"),
    (".env", "GREETING=hello\nPORT=4300\n"),
    ("other.env", "GREETING=other\n"),
];

#[test]
fn exec_runs_the_command_with_the_dotenv_variables() {
    let out = brood_in(
        "exec-env",
        APP,
        &["exec", "--", "sh", "-c", "echo \"greeting=$GREETING port=$PORT\""],
    )
    .run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        out.stdout_str(),
        "greeting=hello port=4300\n",
        "{}",
        out.context()
    );
}

#[test]
fn exec_env_option_replaces_dotenv() {
    let out = brood_in(
        "exec-e",
        APP,
        &[
            "exec",
            "-e",
            "other.env",
            "--",
            "sh",
            "-c",
            "echo \"greeting=$GREETING port=$PORT\"",
        ],
    )
    .run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(out.stdout_str(), "greeting=other port=\n", "{}", out.context());
}

#[test]
fn exec_without_a_config_still_reads_dotenv() {
    let out = brood_in(
        "exec-noconfig",
        &[(".env", "GREETING=bare\n")],
        &["exec", "--", "sh", "-c", "echo \"greeting=$GREETING\""],
    )
    .run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(out.stdout_str(), "greeting=bare\n", "{}", out.context());
}

#[test]
fn exec_of_a_program_name_runs_its_command() {
    let out = brood_in("exec-name", APP, &["exec", "web"]).run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(out.stdout_str(), "web sees hello\n", "{}", out.context());
}

#[test]
fn exec_passes_the_exit_code_through_and_inherits_stdin_and_stderr() {
    let out = brood_in(
        "exec-code",
        APP,
        &[
            "exec",
            "--",
            "sh",
            "-c",
            "read line; echo \"got $line\" >&2; exit 7",
        ],
    )
    .stdin("input\n")
    .run();
    out.assert_code(7).assert_no_panic();
    assert_eq!(out.stderr_str(), "got input\n", "{}", out.context());
}

#[test]
fn exec_death_by_signal_is_passed_through_as_128_plus_the_signal() {
    // brood becomes the command: its parent sees the signal itself...
    let out = brood_in("exec-signal", APP, &["exec", "--", "sh", "-c", "kill -TERM $$"]).run();
    assert_eq!(out.status.signal(), Some(libc::SIGTERM), "{}", out.context());
    // ...and a shell reports it as 128 + N.
    let out = Brood::new("exec-signal-shell")
        .shell("\"$BROOD\" exec -- sh -c 'kill -USR1 $$'; echo \"status=$?\"")
        .run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        out.stdout_str(),
        format!("status={}\n", 128 + libc::SIGUSR1),
        "{}",
        out.context()
    );
}

#[test]
fn exec_keeps_brood_s_pid() {
    // No fork: the command is brood's process (foreman's run, `exec`).
    let mut running = brood_in("exec-pid", APP, &["exec", "--", "sh", "-c", "echo \"pid=$$\""]).start();
    let pid = running.pid();
    wait_for(WATCHDOG, "brood exec to finish", || !running.is_running());
    let out = running.finish();
    out.assert_code(0);
    assert_eq!(out.stdout_str(), format!("pid={pid}\n"), "{}", out.context());
}

#[test]
fn exec_of_a_missing_command_exits_127_with_one_error_line() {
    let out = brood_in("exec-missing", APP, &["exec", "--", "no-such-command-brood"]).run();
    out.assert_code(127).assert_no_panic();
    assert_eq!(
        out.stderr_lines(),
        ["brood: error: cannot exec 'no-such-command-brood': No such file or directory (os error 2)"],
        "{}",
        out.context()
    );
}

// ---------------------------------------------------------------------------
// brood check

#[test]
fn check_lists_the_programs_and_exits_0() {
    let out = brood_in(
        "check-ok",
        &[(
            "Procfile",
            "web: ./web --port $PORT\nworker: A=1 bundle exec sidekiq\n",
        )],
        &["check"],
    )
    .run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        out.stdout_lines(),
        [
            "Procfile: 2 programs",
            "web     1  /bin/sh -c 'exec ./web --port $PORT'",
            "worker  1  /bin/sh -c 'A=1 exec bundle exec sidekiq'",
        ],
        "{}",
        out.context()
    );
}

#[test]
fn check_of_a_toml_config_shows_numprocs() {
    let out = brood_in(
        "check-toml",
        &[(
            "brood.toml",
            "[program.web]\ncommand = [\"python3\", \"-m\", \"http.server\"]\nnumprocs = 3\n",
        )],
        &["check", "-f", "brood.toml"],
    )
    .run();
    out.assert_code(0).assert_no_panic();
    assert_eq!(
        out.stdout_lines(),
        ["brood.toml: 1 programs", "web  3  python3 -m http.server"],
        "{}",
        out.context()
    );
}

#[test]
fn check_of_a_bad_config_exits_2_with_file_line_and_column() {
    let out = brood_in(
        "check-bad",
        &[("Procfile", "web: ./web\n  nocolon\n")],
        &["check"],
    )
    .run();
    out.assert_code(2).assert_no_panic();
    assert_eq!(
        out.stderr_lines(),
        ["brood: error: Procfile:2:3: expected 'name: command'"],
        "{}",
        out.context()
    );
    assert!(out.stdout.is_empty(), "{}", out.context());
}

#[test]
fn check_of_a_bad_dotenv_exits_2() {
    let out = brood_in(
        "check-bad-env",
        &[("Procfile", "web: ./web\n"), (".env", "A=1\njunk\n")],
        &["check"],
    )
    .run();
    out.assert_code(2).assert_no_panic();
    out.assert_stderr_contains("brood: error: ./.env:2: expected KEY=VALUE");
}

// ---------------------------------------------------------------------------
// Colors

/// The SGR color code right before `label` on the terminal, if any.
fn color_before(terminal: &str, label: &str) -> Option<String> {
    let at = terminal.find(&format!("m{label} "))?;
    let start = terminal[..at].rfind("\x1b[")?;
    Some(terminal[start + 2..at].to_owned())
}

#[test]
fn prefix_colors_follow_the_program_not_the_instance_number() {
    let pty = run_in(
        "colors",
        &[("Procfile", "web: echo web-line\nworker: echo worker-line\n")],
        &["-c", "web=2,worker=2"],
    )
    .env("NO_COLOR", "")
    .start_pty();
    pty.wait_events("four exits", |ev| events_of(ev, "exit").len() == 4);
    for label in ["web.1", "web.2", "worker.1", "worker.2"] {
        pty.wait_output_after(0, &format!("m{label} "));
    }
    // Everything exited cleanly: brood ends on its own.
    let (status, terminal, _) = pty.finish();
    assert_eq!(status.code(), Some(0), "{terminal}");
    let colors: Vec<Option<String>> = ["web.1", "web.2", "worker.1", "worker.2"]
        .iter()
        .map(|l| color_before(&terminal, l))
        .collect();
    assert!(
        colors.iter().all(Option::is_some),
        "every label colored: {colors:?}\n{terminal}"
    );
    assert_eq!(colors[0], colors[1], "web.1 and web.2 share a color\n{terminal}");
    assert_eq!(
        colors[2], colors[3],
        "worker.1 and worker.2 share a color\n{terminal}"
    );
    assert_ne!(colors[0], colors[2], "web and worker differ\n{terminal}");
}
