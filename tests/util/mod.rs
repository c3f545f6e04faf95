//! Test harness for driving the real `brood` binary on real child programs.
//!
//! - [`TempDir`]: a directory per test, removed on drop.
//! - [`Brood`]: a builder for one `brood` run (options, program, stdin, env),
//!   always with `--events` into the test's directory. [`Brood::run`] runs to
//!   the end; [`Brood::start`] gives a live [`Running`] session to talk to.
//!   [`Brood::start_pty`] runs brood on a pseudo-terminal.
//! - A watchdog on every run: a brood that has not exited within
//!   [`WATCHDOG`] is SIGKILLed with its process group, and the test fails.
//! - A guard that kills brood's children by process group when a session is
//!   dropped, so a failing test does not leave processes behind. The pids come
//!   from the `spawn` events; nothing is ever killed by name.
//! - [`wait_for`]: poll a condition against a deadline instead of sleeping.
//!
//! brood runs in its own process group (its pid is its pgid), with a clean
//! signal state (empty mask, default dispositions) and `RUST_LOG` unset.

#![allow(dead_code)]

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// How long any single brood run may take before the watchdog kills it.
pub const WATCHDOG: Duration = Duration::from_secs(30);

/// The default deadline for `wait_for` style conditions in tests.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The binary under test: this build's, or `$BROOD_TEST_BIN` (to check that
/// a regression test fails on an older build).
pub fn brood_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("BROOD_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_brood").to_string())
    })
}

pub fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("child-scripts")
}

/// Path of a companion program in `child-scripts/`.
pub fn script(name: &str) -> PathBuf {
    script_dir().join(name)
}

// ---------------------------------------------------------------------------
// Temp dirs

static TEMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A directory unique to one test, removed (with its contents) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let unique = TEMP_COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "brood-test-{}-{}-{}-{}",
            name,
            std::process::id(),
            unique,
            nanos
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// Waiting

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn try_wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `cond` until it holds; panics naming `what` after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    if !try_wait_for(timeout, cond) {
        panic!("timed out after {timeout:?} waiting for: {what}");
    }
}

/// Checks that `cond` keeps holding for the whole of `window`: an
/// observation window for "nothing should happen" (a wrongful restart, a
/// signal that must be ignored), never a wait for something to happen.
/// Fails as soon as `cond` stops holding.
pub fn holds_for(window: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + window;
    while Instant::now() < end {
        if !cond() {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    cond()
}

// ---------------------------------------------------------------------------
// /proc helpers

/// The state letter of a process (`R`, `S`, `Z`, ...), or None if it is gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().next()?.chars().next()
}

/// The parent pid of a process, if it exists.
pub fn proc_ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// A process is dead when it no longer exists or is a zombie. (Orphans are
/// re-parented to PID 1, which in a container may never reap them.)
pub fn process_dead(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => true,
        _ => matches!(proc_state(pid), None | Some('Z') | Some('X')),
    }
}

/// Every pid in /proc right now.
pub fn all_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .collect()
}

/// `(pid, state)` of every process whose parent is `ppid`.
pub fn children_of(ppid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for pid in all_pids() {
        if proc_ppid(pid) == Some(ppid) {
            if let Some(state) = proc_state(pid) {
                out.push((pid, state));
            }
        }
    }
    out
}

/// The resident set size of a process, in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The `Threads:` count of a process.
pub fn thread_count(pid: i32) -> Option<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

// ---------------------------------------------------------------------------
// Events

/// Parses an events file strictly: every line must be a JSON object.
pub fn parse_events(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("events line is not JSON ({e}): {line:?}"))
        })
        .collect()
}

/// Reads an events file leniently (a half-written last line is skipped).
pub fn read_events_lenient(path: &Path) -> Vec<Value> {
    let text = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub fn events_of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// The pids of `spawn` events and whether each has a matching `exit` event.
fn spawned_pids(events: &[Value]) -> Vec<(i32, bool)> {
    let exited: HashSet<i64> = events_of(events, "exit")
        .iter()
        .filter_map(|e| e["pid"].as_i64())
        .collect();
    events_of(events, "spawn")
        .iter()
        .filter_map(|e| e["pid"].as_i64())
        .map(|pid| (pid as i32, exited.contains(&pid)))
        .collect()
}

// ---------------------------------------------------------------------------
// Cleanup guard

/// Kills what a brood run may have left behind, by process group.
///
/// Always: the groups of children that brood never reported as exited.
/// When the test is failing (panicking): brood's own group and every spawned
/// child's group, so grandchildren do not outlive a failed test. The groups
/// of reaped children are left alone on success, since their pids may
/// already belong to someone else's processes.
struct Guard {
    events_path: PathBuf,
    brood_pid: i32,
    dir: TempDir,
}

impl Guard {
    fn kill_leftovers(&self, everything: bool) {
        if everything {
            let _ = kill(Pid::from_raw(-self.brood_pid), Signal::SIGKILL);
        }
        for (pid, exited) in spawned_pids(&read_events_lenient(&self.events_path)) {
            if pid > 1 && (everything || !exited) {
                let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill_leftovers(thread::panicking());
    }
}

// ---------------------------------------------------------------------------
// The builder

enum StdinMode {
    Null,
    Bytes(Vec<u8>),
    Pipe,
}

/// One brood invocation: `brood spawn OPTS --events PATH -- PROG ARGS`.
pub struct Brood {
    dir: TempDir,
    raw: Option<Vec<OsString>>,
    opts: Vec<OsString>,
    prog: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin: StdinMode,
    events: bool,
    leak_fd: Option<i32>,
    stdout_limit: Option<usize>,
    stdout_paused: bool,
    shell: Option<String>,
    watchdog: Duration,
    parent_blocked: Vec<i32>,
    parent_ignored: Vec<i32>,
}

impl Brood {
    /// A `brood spawn` run for the test `name` (used in the temp dir's name).
    pub fn new(name: &str) -> Brood {
        Brood {
            dir: TempDir::new(name),
            raw: None,
            opts: Vec::new(),
            prog: Vec::new(),
            env: Vec::new(),
            stdin: StdinMode::Null,
            events: true,
            leak_fd: None,
            stdout_limit: None,
            stdout_paused: false,
            shell: None,
            watchdog: WATCHDOG,
            parent_blocked: Vec::new(),
            parent_ignored: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn events_path(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }

    /// Options placed before `--`.
    pub fn opts<I, S>(mut self, opts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.opts.extend(opts.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// The program after `--`.
    pub fn prog(mut self, prog: impl AsRef<OsStr>) -> Self {
        self.prog = vec![prog.as_ref().to_owned()];
        self
    }

    /// A companion program from `child-scripts/` as the program.
    pub fn script(self, name: &str) -> Self {
        self.prog(script(name))
    }

    /// Arguments after the program.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.prog.extend(args.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// Run brood with exactly these arguments (no `spawn`, no `--events`).
    pub fn raw_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.raw = Some(args.into_iter().map(|s| s.as_ref().to_owned()).collect());
        self.events = false;
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Feed these bytes on stdin, then close it.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = StdinMode::Bytes(bytes.into());
        self
    }

    /// Keep a pipe on stdin open for [`Running::send`] (the default for
    /// [`Brood::start`] is /dev/null).
    pub fn stdin_pipe(mut self) -> Self {
        self.stdin = StdinMode::Pipe;
        self
    }

    /// Hand brood an extra inherited fd (a copy of its stderr, without
    /// close-on-exec) at this number, as a careless parent would.
    pub fn leak_fd(mut self, fd: i32) -> Self {
        self.leak_fd = Some(fd);
        self
    }

    /// Do not read brood's stdout until [`Running::resume_stdout`]: a
    /// stalled reader.
    pub fn stdout_paused(mut self) -> Self {
        self.stdout_paused = true;
        self
    }

    /// Start brood with these signals blocked and these ignored, as a
    /// parent such as `nohup` would hand them over (instead of the clean
    /// state every other run gets).
    pub fn parent_signal_state(mut self, blocked: &[i32], ignored: &[i32]) -> Self {
        self.parent_blocked = blocked.to_vec();
        self.parent_ignored = ignored.to_vec();
        self
    }

    /// A shorter watchdog, for runs that are expected to be quick.
    pub fn watchdog(mut self, limit: Duration) -> Self {
        self.watchdog = limit;
        self
    }

    /// Close brood's stdout (the read end) once `bytes` bytes have been
    /// read, as `| head -c` would.
    pub fn close_stdout_after(mut self, bytes: usize) -> Self {
        self.stdout_limit = Some(bytes);
        self
    }

    /// Run `bash -c SCRIPT` (in brood's place, as the process-group leader)
    /// with `$BROOD` (the binary), `$EVENTS` (the events path) and `$SCRIPTS`
    /// (the child-scripts dir) in its environment.
    pub fn shell(mut self, script: &str) -> Self {
        self.shell = Some(script.to_owned());
        self
    }

    fn command(&self) -> Command {
        if let Some(script) = &self.shell {
            let mut cmd = Command::new("bash");
            cmd.arg("-c").arg(script);
            cmd.env("BROOD", brood_bin())
                .env("EVENTS", self.events_path())
                .env("SCRIPTS", script_dir());
            cmd.env_remove("RUST_LOG");
            cmd.current_dir(self.dir.path());
            return cmd;
        }
        let mut cmd = Command::new(brood_bin());
        match &self.raw {
            Some(raw) => {
                cmd.args(raw);
            }
            None => {
                cmd.arg("spawn").args(&self.opts);
                if self.events {
                    cmd.arg("--events").arg(self.events_path());
                }
                cmd.arg("--").args(&self.prog);
            }
        }
        cmd.env_remove("RUST_LOG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// Description for failure messages.
    fn describe(&self) -> String {
        format!("{:?}", self.command())
    }

    /// Runs brood to the end (under the watchdog) and collects everything.
    pub fn run(self) -> Output {
        let mut running = self.start();
        running.feed_stdin();
        running.finish()
    }

    /// Starts brood and returns the live session.
    pub fn start(self) -> Running {
        let mut cmd = self.command();
        let description = self.describe();
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(match self.stdin {
            StdinMode::Null => Stdio::null(),
            _ => Stdio::piped(),
        });
        let leak = self.leak_fd;
        let (blocked, ignored) = (self.parent_blocked.clone(), self.parent_ignored.clone());
        cmd.process_group(0);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                clean_signal_state();
                set_signal_state(&blocked, &ignored);
                if let Some(fd) = leak {
                    if libc::dup2(2, fd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let events_path = self.events_path();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start brood: {e}"));
        let pid = child.id() as i32;
        let stdout_gate = Arc::new(AtomicBool::new(self.stdout_paused));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            spawn_reader_limited(
                child.stdout.take().unwrap(),
                stdout.clone(),
                self.stdout_limit,
                Some(stdout_gate.clone()),
            ),
            spawn_reader(child.stderr.take().unwrap(), stderr.clone()),
        ];
        let pending_stdin = match self.stdin {
            StdinMode::Bytes(b) => Some(b),
            _ => None,
        };
        Running {
            stdin: child.stdin.take(),
            pending_stdin,
            child: Some(child),
            pid,
            stdout_gate,
            stdout,
            stderr,
            readers,
            started: Instant::now(),
            watchdog: self.watchdog,
            description,
            guard: Guard {
                events_path,
                brood_pid: pid,
                dir: self.dir,
            },
        }
    }

    /// Starts brood with a pseudo-terminal as its stdin, stdout and stderr
    /// (and controlling terminal, in a new session).
    pub fn start_pty(self) -> PtySession {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let master: OwnedFd = pty.master;
        let slave: OwnedFd = pty.slave;
        let mut cmd = self.command();
        let description = self.describe();
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                clean_signal_state();
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start brood: {e}"));
        // The Command holds our copies of the slave; drop them so that the
        // master sees EIO once brood and its children are gone.
        drop(cmd);
        let pid = child.id() as i32;
        let output = Arc::new(Mutex::new(Vec::new()));
        let reader_fd = master.try_clone().expect("dup pty master");
        let reader = spawn_reader(File::from(reader_fd), output.clone());
        PtySession {
            master: File::from(master),
            child: Some(child),
            pid,
            output,
            reader: Some(reader),
            started: Instant::now(),
            watchdog: self.watchdog,
            description,
            guard: Guard {
                events_path: self.events_path(),
                brood_pid: pid,
                dir: self.dir,
            },
        }
    }
}

/// Empty signal mask, default dispositions for every signal (1..=64): the
/// state a well-behaved parent hands over, so that what the children see is
/// brood's doing alone. (The test process may itself have inherited ignored
/// signals, e.g. 32, which glibc's `signal()` refuses to touch; hence the raw
/// `rt_sigaction`.) Async-signal-safe.
unsafe fn clean_signal_state() {
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: 0, /* SIG_DFL */
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig as libc::c_long,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8 as libc::c_long,
            );
        }
    }
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
}

/// Block `blocked` and ignore `ignored` (after [`clean_signal_state`]).
/// Async-signal-safe.
unsafe fn set_signal_state(blocked: &[i32], ignored: &[i32]) {
    let ign: [u64; 4] = [libc::SIG_IGN as u64, 0, 0, 0];
    for &sig in ignored {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig as libc::c_long,
            ign.as_ptr(),
            std::ptr::null_mut::<u64>(),
            8 as libc::c_long,
        );
    }
    if !blocked.is_empty() {
        // The kernel's 64-bit mask, so that 32 and 33 can be blocked too.
        let mut mask: u64 = 0;
        for &sig in blocked {
            mask |= 1 << (sig - 1);
        }
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK as libc::c_long,
            &mask as *const u64,
            std::ptr::null_mut::<u64>(),
            8 as libc::c_long,
        );
    }
}

fn spawn_reader(src: impl Read + Send + 'static, buf: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    spawn_reader_limited(src, buf, None, None)
}

/// Reads `src` into `buf` until EOF, or until `limit` bytes, then drops
/// (closes) `src`. While `paused` is set, does not read at all.
fn spawn_reader_limited(
    mut src: impl Read + Send + 'static,
    buf: Arc<Mutex<Vec<u8>>>,
    limit: Option<usize>,
    paused: Option<Arc<AtomicBool>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            while paused.as_ref().is_some_and(|p| p.load(Ordering::SeqCst)) {
                thread::sleep(Duration::from_millis(5));
            }
            let want = match limit {
                Some(limit) => {
                    let have = buf.lock().unwrap().len();
                    if have >= limit {
                        break;
                    }
                    (limit - have).min(chunk.len())
                }
                None => chunk.len(),
            };
            match src.read(&mut chunk[..want]) {
                Ok(0) => break,
                Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // EIO on a pty master once the slave side is gone.
                Err(_) => break,
            }
        }
    })
}

/// Waits for `child` under the watchdog; on timeout kills brood's group.
fn wait_with_watchdog(child: &mut Child, pid: i32, started: Instant, limit: Duration) -> Option<ExitStatus> {
    let deadline = started + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn join_readers(readers: Vec<JoinHandle<()>>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for r in readers {
        while !r.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        if r.is_finished() {
            let _ = r.join();
        }
    }
}

// ---------------------------------------------------------------------------
// A live session on pipes

pub struct Running {
    child: Option<Child>,
    pid: i32,
    stdin: Option<ChildStdin>,
    pending_stdin: Option<Vec<u8>>,
    stdout_gate: Arc<AtomicBool>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
    watchdog: Duration,
    description: String,
    // Last: dropped after the child has been dealt with.
    guard: Guard,
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn dir(&self) -> &Path {
        self.guard.dir.path()
    }

    /// Writes the stdin bytes given to the builder from a thread, then
    /// closes stdin (a thread, because brood may not read them all).
    fn feed_stdin(&mut self) {
        if let Some(bytes) = self.pending_stdin.take() {
            if let Some(mut stdin) = self.stdin.take() {
                thread::spawn(move || {
                    let _ = stdin.write_all(&bytes);
                });
            }
        }
    }

    /// Starts reading brood's stdout (after [`Brood::stdout_paused`]).
    pub fn resume_stdout(&self) {
        self.stdout_gate.store(false, Ordering::SeqCst);
    }

    /// Writes `text` to brood's stdin.
    pub fn send(&mut self, text: &str) {
        self.send_bytes(text.as_bytes());
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let stdin = self
            .stdin
            .as_mut()
            .expect("stdin is not a pipe (use stdin_pipe())");
        stdin.write_all(bytes).expect("write to brood's stdin");
        stdin.flush().expect("flush brood's stdin");
    }

    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    pub fn stdout(&self) -> Vec<u8> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Vec<u8> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout()).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr()).into_owned()
    }

    pub fn events(&self) -> Vec<Value> {
        read_events_lenient(&self.guard.events_path)
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid), sig).expect("signal brood");
    }

    fn context(&self) -> String {
        format!(
            "\n--- command: {}\n--- stdout:\n{}\n--- stderr:\n{}\n--- events:\n{}",
            self.description,
            truncate(&self.stdout_str()),
            truncate(&self.stderr_str()),
            truncate(&String::from_utf8_lossy(
                &std::fs::read(&self.guard.events_path).unwrap_or_default()
            )),
        )
    }

    /// Waits until brood's stdout satisfies `pred`.
    pub fn wait_stdout(&self, what: &str, pred: impl Fn(&str) -> bool) {
        if !try_wait_for(DEADLINE, || pred(&self.stdout_str())) {
            panic!("timed out waiting for stdout: {what}{}", self.context());
        }
    }

    /// Waits until brood's stderr satisfies `pred`.
    pub fn wait_stderr(&self, what: &str, pred: impl Fn(&str) -> bool) {
        if !try_wait_for(DEADLINE, || pred(&self.stderr_str())) {
            panic!("timed out waiting for stderr: {what}{}", self.context());
        }
    }

    /// Waits until the events so far satisfy `pred`.
    pub fn wait_events(&self, what: &str, pred: impl Fn(&[Value]) -> bool) {
        if !try_wait_for(DEADLINE, || pred(&self.events())) {
            panic!("timed out waiting for events: {what}{}", self.context());
        }
    }

    /// Waits for `count` spawn events and returns their pids in order.
    pub fn wait_spawned(&self, count: usize) -> Vec<i32> {
        self.wait_events(&format!("{count} spawn events"), |ev| {
            events_of(ev, "spawn").len() >= count
        });
        events_of(&self.events(), "spawn")
            .iter()
            .map(|e| e["pid"].as_i64().unwrap() as i32)
            .collect()
    }

    /// Whether brood is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits (under the watchdog) for brood to exit, keeping stdin as it is.
    pub fn finish(mut self) -> Output {
        self.resume_stdout();
        let mut child = self.child.take().expect("finished twice");
        let status = wait_with_watchdog(&mut child, self.pid, self.started, self.watchdog);
        let elapsed = self.started.elapsed();
        if status.is_none() {
            self.guard.kill_leftovers(true);
        }
        self.stdin.take();
        join_readers(std::mem::take(&mut self.readers), Duration::from_secs(5));
        let Some(status) = status else {
            panic!(
                "WATCHDOG: brood did not exit within {:?}; killed it{}",
                self.watchdog,
                self.context()
            );
        };
        let events_text = std::fs::read(&self.guard.events_path).unwrap_or_default();
        Output {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
            events_text: String::from_utf8_lossy(&events_text).into_owned(),
            elapsed,
            description: self.description.clone(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The test ended early (most likely it failed): kill everything.
            self.guard.kill_leftovers(true);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn truncate(s: &str) -> String {
    const MAX: usize = 6000;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut cut = MAX;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n... ({} more bytes)", &s[..cut], s.len() - cut)
}

// ---------------------------------------------------------------------------
// A live session on a pseudo-terminal

pub struct PtySession {
    master: File,
    child: Option<Child>,
    pid: i32,
    output: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
    started: Instant,
    watchdog: Duration,
    description: String,
    guard: Guard,
}

impl PtySession {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn send(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).expect("write to pty");
        self.master.flush().expect("flush pty");
    }

    /// Everything brood wrote to the terminal, with `\r` removed.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).replace('\r', "")
    }

    /// Current length of [`PtySession::output`], to wait for text after it.
    pub fn mark(&self) -> usize {
        self.output().len()
    }

    pub fn events(&self) -> Vec<Value> {
        read_events_lenient(&self.guard.events_path)
    }

    /// Waits until the output after `mark` contains `needle`.
    pub fn wait_output_after(&self, mark: usize, needle: &str) {
        let ok = try_wait_for(DEADLINE, || {
            self.output().get(mark..).is_some_and(|s| s.contains(needle))
        });
        if !ok {
            panic!(
                "timed out waiting for {needle:?} on the terminal after byte {mark}\n--- command: {}\n--- terminal:\n{}",
                self.description,
                truncate(&self.output())
            );
        }
    }

    pub fn wait_events(&self, what: &str, pred: impl Fn(&[Value]) -> bool) {
        if !try_wait_for(DEADLINE, || pred(&self.events())) {
            panic!(
                "timed out waiting for events: {what}\n--- terminal:\n{}",
                truncate(&self.output())
            );
        }
    }

    /// Waits (under the watchdog) for brood to exit; returns its status,
    /// the terminal output and the events.
    pub fn finish(mut self) -> (ExitStatus, String, Vec<Value>) {
        let mut child = self.child.take().expect("finished twice");
        let status = wait_with_watchdog(&mut child, self.pid, self.started, self.watchdog);
        if status.is_none() {
            self.guard.kill_leftovers(true);
        }
        if let Some(reader) = self.reader.take() {
            join_readers(vec![reader], Duration::from_secs(2));
        }
        let Some(status) = status else {
            panic!(
                "WATCHDOG: brood did not exit within {:?}; killed it\n--- terminal:\n{}",
                self.watchdog,
                truncate(&self.output())
            );
        };
        (status, self.output(), self.events())
    }
}

impl Drop for PtySession {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.guard.kill_leftovers(true);
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Results

pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub events_text: String,
    pub elapsed: Duration,
    description: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_str().lines().map(str::to_owned).collect()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr_str().lines().map(str::to_owned).collect()
    }

    /// All events, parsed strictly.
    pub fn events(&self) -> Vec<Value> {
        parse_events(&self.events_text)
    }

    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events().into_iter().filter(|e| e["event"] == kind).collect()
    }

    /// Everything about the run, for failure messages.
    pub fn context(&self) -> String {
        format!(
            "\n--- command: {}\n--- status: {:?} (signal {:?}) after {:?}\n--- stdout:\n{}\n--- stderr:\n{}\n--- events:\n{}",
            self.description,
            self.status.code(),
            self.status.signal(),
            self.elapsed,
            truncate(&self.stdout_str()),
            truncate(&self.stderr_str()),
            truncate(&self.events_text),
        )
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "unexpected exit status{}",
            self.context()
        );
        self
    }

    /// brood must never print a panic message.
    #[track_caller]
    pub fn assert_no_panic(&self) -> &Self {
        let err = self.stderr_str();
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "brood panicked{}",
            self.context()
        );
        assert_ne!(
            self.status.code(),
            Some(101),
            "exit 101 is a Rust panic{}",
            self.context()
        );
        self
    }

    #[track_caller]
    pub fn assert_stderr_contains(&self, needle: &str) -> &Self {
        assert!(
            self.stderr_str().contains(needle),
            "stderr does not contain {needle:?}{}",
            self.context()
        );
        self
    }
}

// ---------------------------------------------------------------------------
// Prefixed lines

/// Splits a prefixed output line `LABEL   | rest` into `(LABEL, rest)`.
pub fn split_prefixed(line: &str) -> Option<(&str, &str)> {
    let at = line.find(" | ")?;
    let label = line[..at].trim_end();
    if label.is_empty() || label.contains(' ') {
        return None;
    }
    Some((label, &line[at + 3..]))
}

/// Byte version of [`split_prefixed`] for output that is not UTF-8.
pub fn split_prefixed_bytes(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = line.windows(3).position(|w| w == b" | ")?;
    let mut end = at;
    while end > 0 && line[end - 1] == b' ' {
        end -= 1;
    }
    if end == 0 || line[..end].contains(&b' ') {
        return None;
    }
    Some((&line[..end], &line[at + 3..]))
}

/// The events' `n` values of the spawn events, in order.
pub fn spawn_counters(events: &[Value]) -> Vec<i64> {
    events_of(events, "spawn")
        .iter()
        .map(|e| e["n"].as_i64().unwrap_or(-1))
        .collect()
}

/// The label of a child with this pid, from the spawn events.
pub fn label_of(events: &[Value], pid: i32) -> Option<String> {
    events_of(events, "spawn")
        .iter()
        .find(|e| e["pid"].as_i64() == Some(pid as i64))
        .and_then(|e| e["label"].as_str().map(str::to_owned))
}

// ---------------------------------------------------------------------------
// Event accounting (reliability and stress tests)

/// The one summary event, which must be the last line of the events file.
#[track_caller]
pub fn summary(out: &Output) -> serde_json::Value {
    let events = out.events();
    let last = events
        .last()
        .unwrap_or_else(|| panic!("no events{}", out.context()));
    assert_eq!(last["event"], "summary", "summary is not last{}", out.context());
    assert_eq!(events_of(&events, "summary").len(), 1, "{}", out.context());
    last.clone()
}

pub fn count(v: &serde_json::Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .unwrap_or_else(|| panic!("summary field {field} missing: {v}"))
}

/// spawn events == exit events == summary.spawned, spawn_failed events ==
/// summary.spawn_failed, succeeded + failed + stopped == spawned, every
/// spawned pid has exactly one exit event. Returns the summary.
#[track_caller]
pub fn assert_counts_exact(out: &Output) -> serde_json::Value {
    let events = out.events();
    let s = summary(out);
    let spawns = events_of(&events, "spawn");
    let exits = events_of(&events, "exit");
    let failed = events_of(&events, "spawn_failed");
    assert_eq!(spawns.len(), exits.len(), "spawn vs exit events{}", out.context());
    assert_eq!(spawns.len() as i64, count(&s, "spawned"), "{}", out.context());
    assert_eq!(
        failed.len() as i64,
        count(&s, "spawn_failed"),
        "{}",
        out.context()
    );
    assert_eq!(
        count(&s, "succeeded") + count(&s, "failed") + count(&s, "stopped"),
        count(&s, "spawned"),
        "{}",
        out.context()
    );
    let spawned: HashSet<i64> = spawns.iter().map(|e| e["pid"].as_i64().unwrap()).collect();
    let exited: Vec<i64> = exits.iter().map(|e| e["pid"].as_i64().unwrap()).collect();
    let exited_set: HashSet<i64> = exited.iter().copied().collect();
    assert_eq!(spawned.len(), spawns.len(), "pid reported twice{}", out.context());
    assert_eq!(
        exited_set.len(),
        exited.len(),
        "exit reported twice{}",
        out.context()
    );
    assert_eq!(
        spawned,
        exited_set,
        "spawned and exited pids differ{}",
        out.context()
    );
    s
}

/// `brood run --events EVENTS ARGS...` in a fresh temp dir that holds
/// `files` (name, contents) first.
pub fn run_in(name: &str, files: &[(&str, &str)], args: &[&str]) -> Brood {
    let brood = Brood::new(name);
    for (file, text) in files {
        std::fs::write(brood.dir().join(file), text).expect("write config file");
    }
    let events = brood.events_path();
    let mut argv: Vec<std::ffi::OsString> = vec!["run".into(), "--events".into(), events.into()];
    argv.extend(args.iter().map(|a| a.into()));
    brood.raw_args(argv)
}

/// `brood run --events EVENTS` on a brood.toml of `toml`, started.
pub fn start_toml(name: &str, toml: &str) -> Running {
    run_in(name, &[("brood.toml", toml)], &[]).start()
}

/// `brood ctl --socket DIR/.brood.sock ARGS...` against a running brood,
/// waited for (ctl bounds its own waits with --timeout).
pub fn ctl_of(brood: &Running, args: &[&str]) -> std::process::Output {
    std::process::Command::new(brood_bin())
        .arg("ctl")
        .arg("--socket")
        .arg(brood.dir().join(".brood.sock"))
        .args(args)
        .output()
        .expect("run brood ctl")
}
