//! Log files (SPEC 15): `log = { file | dir, max_size, keep, timestamps }`
//! per program and in `[defaults]`, against the real binary and real
//! children: content and order, mode and directories, timestamps, rotation
//! with numbered lines, `[defaults]` replaced whole, `brood ctl reopen`
//! after `mv`, a full tmpfs (root: mounts one) and an unwritable path.
//!
//! Each test runs `brood run --events EVENTS --socket SOCK -f brood.toml`
//! in its own temp dir under the harness's watchdog and cleanup guard
//! (tests/util/mod.rs): brood's group and its children's groups are killed
//! by pid when a test fails. Nothing sleeps to order events: the tests wait
//! for files, events and output with a deadline, and the children that
//! must write in a given order wait for brood to have written their
//! previous line.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use serde_json::Value;
use util::*;

// ---------------------------------------------------------------------------
// Helpers

/// A config dir of its own: the log files must outlive the brood session
/// (whose temp dir goes when it ends).
struct Work {
    dir: TempDir,
    sock: PathBuf,
}

impl Work {
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Writes `config` to brood.toml in a fresh temp dir and returns the
/// builder for `brood run` on it, with its socket in that dir.
fn run_config(name: &str, config: &str) -> (Brood, Work) {
    let brood = Brood::new(name);
    let dir = TempDir::new(&format!("{name}-work"));
    let config_path = dir.join("brood.toml");
    std::fs::write(&config_path, config).expect("write brood.toml");
    let sock = dir.join("s.sock");
    let events = brood.events_path();
    let brood = brood.raw_args([
        "run".as_ref(),
        "--events".as_ref(),
        events.as_os_str(),
        "--socket".as_ref(),
        sock.as_os_str(),
        "-f".as_ref(),
        config_path.as_os_str(),
    ]);
    (brood, Work { dir, sock })
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn lines(path: &Path) -> Vec<String> {
    read(path).lines().map(str::to_owned).collect()
}

/// The console lines of one label, without the prefix.
fn console_lines(text: &str, label: &str) -> Vec<String> {
    text.lines()
        .filter_map(split_prefixed)
        .filter(|(l, _)| *l == label)
        .map(|(_, line)| line.to_owned())
        .collect()
}

/// `brood ctl --socket SOCK ARGS...`, run to the end.
fn ctl(sock: &Path, args: &[&str]) -> Output {
    let mut argv: Vec<std::ffi::OsString> = vec!["ctl".into(), "--socket".into(), sock.into()];
    argv.extend(args.iter().map(Into::into));
    Brood::new("ctl")
        .raw_args(argv)
        .watchdog(std::time::Duration::from_secs(15))
        .run()
}

fn log_dropped(events: &[Value]) -> Vec<Value> {
    events_of(events, "log_dropped").into_iter().cloned().collect()
}

/// The number N of each "line N" (or "tick N") line, in order.
fn numbers(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a numbered line: {l:?}"))
        })
        .collect()
}

fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A shell snippet: wait (at most ~10 s) until the log file `$LOG` has the
/// line `$1` whole, so the next write comes after brood wrote this one.
const WAIT_LOGGED: &str = r#"logged() { n=0; until grep -qxF "$1" "$LOG" 2>/dev/null; do n=$((n+1)); [ $n -gt 1000 ] && exit 9; sleep 0.01; done; }"#;

// ---------------------------------------------------------------------------
// Content, order, mode

#[test]
fn stdout_and_stderr_lines_go_whole_into_one_file_in_the_order_brood_read_them() {
    // The child runs in the config's directory: LOG is relative to it, as
    // the config's log dir is.
    let config = format!(
        r#"
[program.w]
shell = '''{WAIT_LOGGED}
for i in 1 2 3 4 5; do
  echo "out $i"; logged "out $i"
  echo "err $i" >&2; logged "err $i"
done
printf 'no newline at the end'
'''
env = {{ LOG = "logs/deep/w.1.log" }}
restart = "never"
log = {{ dir = "logs/deep" }}
"#
    );
    let (brood, work) = run_config("order", &config);
    let dir = work.path().to_path_buf();
    let log = dir.join("logs/deep/w.1.log");
    let out = brood.run();
    out.assert_code(0);
    let want: Vec<String> = (1..=5)
        .flat_map(|i| [format!("out {i}"), format!("err {i}")])
        .chain(["no newline at the end".to_string()])
        .collect();
    assert_eq!(lines(&log), want, "{}", out.context());
    assert!(
        read(&log).ends_with("at the end\n"),
        "a final line gets its newline"
    );
    // Still on the console, prefixed, each stream on its own.
    assert_eq!(
        console_lines(&out.stdout_str(), "w.1").len(),
        6,
        "{}",
        out.context()
    );
    assert_eq!(
        console_lines(&out.stderr_str(), "w.1").len(),
        5,
        "{}",
        out.context()
    );
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "log file mode");
    assert!(dir.join("logs/deep").is_dir());
}

#[test]
fn log_file_is_0640_even_with_umask_0_and_an_existing_file_is_appended_to() {
    let (brood, work) = run_config(
        "umask",
        r#"
[program.a]
command = ["echo", "second run"]
restart = "never"
log = { file = "a.log" }
"#,
    );
    let dir = work.path().to_path_buf();
    std::fs::write(dir.join("old.log"), "first run\n").unwrap();
    std::fs::rename(dir.join("old.log"), dir.join("a.log")).unwrap();
    std::fs::set_permissions(dir.join("a.log"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = brood.run();
    out.assert_code(0);
    assert_eq!(lines(&dir.join("a.log")), ["first run", "second run"]);
    let mode = std::fs::metadata(dir.join("a.log")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "an existing file keeps its mode");

    let (brood, work) = run_config(
        "umask0",
        r#"
[program.a]
command = ["echo", "hi"]
restart = "never"
log = { file = "new/a.{n}.log" }
"#,
    );
    let dir = work.path().to_path_buf();
    let script = format!(
        r#"umask 0; cd '{}' && exec "$BROOD" run -f brood.toml --socket s.sock --events "$EVENTS""#,
        dir.display()
    );
    let out = brood.shell(&script).run();
    out.assert_code(0);
    let mode = std::fs::metadata(dir.join("new/a.1.log"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640, "created 0640 whatever the umask{}", out.context());
    assert_eq!(lines(&dir.join("new/a.1.log")), ["hi"]);
}

#[test]
fn timestamps_are_rfc3339_utc_with_milliseconds_before_each_line() {
    let (brood, work) = run_config(
        "stamps",
        r#"
[program.t]
shell = "echo one; echo two >&2"
restart = "never"
log = { file = "t.log", timestamps = true }
"#,
    );
    let dir = work.path().to_path_buf();
    let before = utc_date();
    let out = brood.run();
    out.assert_code(0);
    let after = utc_date();
    let got = lines(&dir.join("t.log"));
    assert_eq!(got.len(), 2, "{got:?}");
    let mut texts = Vec::new();
    for line in &got {
        let (stamp, text) = line.split_once(' ').unwrap();
        let b = stamp.as_bytes();
        assert_eq!(b.len(), 24, "{stamp}");
        for (i, c) in b.iter().enumerate() {
            let want = match i {
                4 | 7 => Some(b'-'),
                10 => Some(b'T'),
                13 | 16 => Some(b':'),
                19 => Some(b'.'),
                23 => Some(b'Z'),
                _ => None,
            };
            match want {
                Some(w) => assert_eq!(*c, w, "{stamp} at {i}"),
                None => assert!(c.is_ascii_digit(), "{stamp} at {i}"),
            }
        }
        assert!(
            stamp[..10] == before || stamp[..10] == after,
            "{stamp} is not today in UTC ({before})"
        );
        texts.push(text.to_string());
    }
    texts.sort();
    assert_eq!(texts, ["one", "two"]);
    // The console is unchanged: no stamps there without --timestamps.
    assert_eq!(console_lines(&out.stdout_str(), "t.1"), ["one"]);
}

fn utc_date() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// ---------------------------------------------------------------------------
// Rotation

#[test]
fn rotation_keeps_keep_files_under_max_size_with_no_line_lost_or_repeated() {
    const MAX: u64 = 1024;
    let (brood, work) = run_config(
        "rotate",
        &format!(
            r#"
[program.c]
command = ["{}", "3000"]
restart = "never"
log = {{ file = "c.log", max_size = "1KiB", keep = 3 }}
"#,
            script("counter").display()
        ),
    );
    let dir = work.path().to_path_buf();
    let out = brood.run();
    out.assert_code(0);
    let f = dir.join("c.log");
    let kept: Vec<PathBuf> = ["c.log.3", "c.log.2", "c.log.1", "c.log"]
        .iter()
        .map(|n| dir.join(n))
        .collect();
    assert!(!dir.join("c.log.4").exists(), "more than keep = 3 rotated files");
    let mut all = Vec::new();
    for (i, p) in kept.iter().enumerate() {
        let size = std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .len();
        assert!(size <= MAX, "{} is {size} bytes", p.display());
        if let Some(next) = kept.get(i + 1) {
            // Rotated only when the next line would not have fitted.
            let first_next = lines(next).first().map_or(0, |l| l.len() as u64 + 1);
            assert!(
                size + first_next > MAX,
                "{} rotated early at {size} bytes",
                p.display()
            );
        }
        all.extend(lines(p));
    }
    let n = numbers(&all);
    assert_eq!(n.last(), Some(&3000), "the newest line is in {}", f.display());
    assert!(
        n.windows(2).all(|w| w[1] == w[0] + 1),
        "lines kept are consecutive: none lost, none repeated"
    );
    assert!(n.len() > 300, "four files of ~1 KiB hold {} lines", n.len());
}

#[test]
fn keep_0_truncates_the_file_in_place() {
    let (brood, work) = run_config(
        "keep0",
        &format!(
            r#"
[program.c]
command = ["{}", "500"]
restart = "never"
log = {{ file = "c.log", max_size = "512B", keep = 0 }}
"#,
            script("counter").display()
        ),
    );
    let dir = work.path().to_path_buf();
    brood.run().assert_code(0);
    let got = numbers(&lines(&dir.join("c.log")));
    assert_eq!(got.last(), Some(&500));
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1));
    assert!(std::fs::metadata(dir.join("c.log")).unwrap().len() <= 512);
    assert!(!dir.join("c.log.1").exists());
}

// ---------------------------------------------------------------------------
// [defaults]

#[test]
fn defaults_apply_to_every_program_and_a_programs_own_log_replaces_them_whole() {
    let (brood, work) = run_config(
        "defaults",
        r#"
[defaults]
log = { dir = "dlog", timestamps = true }
restart = "never"

[program.a]
command = ["echo", "from a"]

[program.b]
command = ["echo", "from b"]
log = { file = "b.log" }
"#,
    );
    let dir = work.path().to_path_buf();
    let out = brood.run();
    out.assert_code(0);
    let a = lines(&dir.join("dlog/a.1.log"));
    assert_eq!(a.len(), 1);
    assert!(a[0].ends_with("Z from a"), "default timestamps apply: {a:?}");
    // b's own table replaced the default whole: its file, and no timestamps.
    assert_eq!(lines(&dir.join("b.log")), ["from b"]);
    assert!(!dir.join("dlog/b.1.log").exists());
}

// ---------------------------------------------------------------------------
// brood ctl reopen

#[test]
fn reopen_after_mv_leaves_old_lines_in_the_old_file_and_new_ones_in_a_new_file() {
    let (brood, work) = run_config(
        "reopen",
        r#"
[program.t]
shell = "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.02; done"
stop_timeout = "1s"
log = { file = "t.log" }
"#,
    );
    let dir = work.path().to_path_buf();
    let running = brood.start();
    let log = dir.join("t.log");
    wait_for(DEADLINE, "first ticks in t.log", || lines(&log).len() >= 3);
    std::fs::rename(&log, dir.join("t.log.old")).unwrap();
    let r = ctl(&work.sock, &["reopen"]);
    r.assert_code(0);
    assert_eq!(r.stdout_str(), "reopened 1 log files\n");
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "reopen creates the new file 0640");
    wait_for(DEADLINE, "ticks in the new t.log", || lines(&log).len() >= 3);
    running.signal(Signal::SIGTERM);
    let out = running.finish();
    out.assert_code(0);
    let old = numbers(&lines(&dir.join("t.log.old")));
    let new = numbers(&lines(&log));
    assert!(!old.is_empty() && !new.is_empty());
    let all: Vec<u64> = old.iter().chain(&new).copied().collect();
    assert_eq!(all[0], 0);
    assert!(
        all.windows(2).all(|w| w[1] == w[0] + 1),
        "old file then new file: every tick once, in order: {old:?} / {new:?}"
    );
    assert_eq!(all.len(), console_lines(&out.stdout_str(), "t.1").len());
}

#[test]
fn reopen_is_a_protocol_verb() {
    let (brood, work) = run_config(
        "reopen-proto",
        r#"
[program.s]
command = ["sleep", "30"]
stop_timeout = "1s"
"#,
    );
    let running = brood.start();
    wait_for(DEADLINE, "the socket", || work.sock.exists());
    let r = ctl(&work.sock, &["reopen"]);
    r.assert_code(0);
    assert_eq!(r.stdout_str(), "reopened 0 log files\n");
    running.signal(Signal::SIGTERM);
    running.finish().assert_code(0);
}

// ---------------------------------------------------------------------------
// Failures: a full disk, an unwritable path

/// A 64 KiB tmpfs on a temp dir, unmounted on drop (also when the test
/// fails). Declared before the brood session, so it outlives it.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(name: &str) -> Tmpfs {
        let dir = TempDir::new(name);
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount -t tmpfs on {} failed", dir.path().display());
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill it to the last byte.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.path().join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![b'x'; 4096];
        while f.write(&chunk).is_ok_and(|n| n > 0) {}
        while f.write(b"x").is_ok_and(|n| n > 0) {}
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let path = self.path().to_path_buf();
        let done = std::process::Command::new("umount")
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !done {
            // Something still has a file open there: detach it anyway.
            let _ = std::process::Command::new("umount").arg("-l").arg(&path).status();
        }
    }
}

#[test]
fn a_full_disk_drops_and_counts_lines_reports_once_and_writing_resumes_by_itself() {
    assert!(is_root(), "this test mounts a tmpfs: it needs root");
    let tmpfs = Tmpfs::mount("full");
    let filler = tmpfs.fill();
    let log = tmpfs.path().join("t.1.log");
    let (brood, _work) = run_config(
        "full",
        &format!(
            r#"
[program.t]
shell = "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.01; done"
stop_timeout = "1s"
log = {{ dir = "{}" }}
"#,
            tmpfs.path().display()
        ),
    );
    let running = brood.start();
    running.wait_stderr("the error line", |e| e.contains("log file"));
    running.wait_stdout("ticks go on", |o| console_lines(o, "t.1").len() >= 20);
    assert!(running.events().iter().all(|e| e["event"] != "log_dropped"));
    std::fs::remove_file(&filler).unwrap();
    running.wait_events("log_dropped once writing works again", |ev| {
        !events_of(ev, "log_dropped").is_empty()
    });
    let resumed_at = console_lines(&running.stdout_str(), "t.1").len();
    wait_for(DEADLINE, "new ticks in the log file", || lines(&log).len() >= 5);
    running.wait_stdout("more ticks", |o| console_lines(o, "t.1").len() >= resumed_at + 10);
    running.signal(Signal::SIGTERM);
    let out = running.finish();
    out.assert_code(0);
    let errors = out
        .stderr_str()
        .lines()
        .filter(|l| l.contains("log file") && l.contains("cannot"))
        .count();
    assert_eq!(errors, 1, "one error line for the outage{}", out.context());
    let dropped = log_dropped(&out.events());
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!(dropped[0]["label"], "t.1");
    assert_eq!(dropped[0]["file"], log.display().to_string());
    let lost = dropped[0]["lines"].as_u64().unwrap();
    assert!(lost >= 20, "{lost}");
    // Every line is accounted for: in the file, or counted as dropped.
    let written = numbers(&lines(&log));
    let shown = console_lines(&out.stdout_str(), "t.1").len() as u64;
    assert_eq!(written.len() as u64 + lost, shown, "{}", out.context());
    assert!(
        written.windows(2).all(|w| w[1] == w[0] + 1),
        "whole lines, in order"
    );
    assert_eq!(written.last(), Some(&(shown - 1)));
    drop(tmpfs);
}

#[test]
fn an_unwritable_log_path_never_stops_supervision_and_its_lines_are_counted() {
    let (brood, work) = run_config(
        "unwritable",
        &format!(
            r#"
[program.bad]
command = ["{}", "200"]
restart = "never"
log = {{ file = "blocker/bad.log" }}

[program.good]
command = ["{}", "50"]
restart = "never"
log = {{ file = "good.log" }}
"#,
            script("counter").display(),
            script("counter").display()
        ),
    );
    let dir = work.path().to_path_buf();
    // A path whose parent is a regular file cannot be created, even by root.
    std::fs::write(dir.join("blocker"), "").unwrap();
    let out = brood.run();
    out.assert_code(0);
    assert_eq!(console_lines(&out.stdout_str(), "bad.1").len(), 200);
    assert_eq!(lines(&dir.join("good.log")).len(), 50);
    let errors = out
        .stderr_str()
        .lines()
        .filter(|l| l.contains("blocker/bad.log") && l.contains("cannot open"))
        .count();
    assert_eq!(errors, 1, "reported once{}", out.context());
    let dropped = log_dropped(&out.events());
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert_eq!(dropped[0]["label"], "bad.1");
    assert_eq!(dropped[0]["lines"], 200, "every line counted");
    assert_eq!(
        out.events().last().unwrap()["event"],
        "summary",
        "summary stays last"
    );
}
