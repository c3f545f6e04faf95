//! Terminals (SPEC 18): `tty = true` runs an instance on a pseudo-terminal,
//! and `brood ctl attach LABEL` connects a terminal to it.
//!
//! brood runs as `brood run --socket SOCK --events EVENTS -f brood.toml` on
//! pipes, under the harness's watchdog and cleanup guard. The attach client
//! runs on a pseudo-terminal of the test's own ([`AttachPty`]), in a session
//! of its own, so that the test can type into it, resize it (the kernel
//! then sends it SIGWINCH) and read its terminal mode back. Every process a
//! test starts is killed by pid (the client) or by process group (brood
//! and its children, through the guard) even when the test fails.

mod util;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::termios::{self, LocalFlags, Termios};
use nix::unistd::Pid;
use serde_json::{json, Value};
use util::*;

// ---------------------------------------------------------------------------
// Helpers

/// A live `brood run` with its control socket.
struct Server {
    brood: Running,
    sock: PathBuf,
}

impl Server {
    /// `brood run` on `config`, waiting until every instance runs.
    fn start(name: &str, config: &str) -> Server {
        let brood = Brood::new(name);
        let sock = brood.dir().join("s.sock");
        let config_path = brood.dir().join("brood.toml");
        std::fs::write(&config_path, config).expect("write brood.toml");
        let events = brood.events_path();
        let brood = brood
            .raw_args([
                "run".as_ref(),
                "--events".as_ref(),
                events.as_os_str(),
                "--socket".as_ref(),
                sock.as_os_str(),
                "-f".as_ref(),
                config_path.as_os_str(),
            ])
            .start();
        let server = Server { brood, sock };
        let up = try_wait_for(DEADLINE, || {
            try_request(&server.sock, &json!({"verb": "status"})).is_ok_and(|r| {
                r["programs"].as_array().is_some_and(|ps| {
                    !ps.is_empty() && ps.iter().all(|p| p["state"] == "running" && p["pid"].is_i64())
                })
            })
        });
        assert!(
            up,
            "brood did not come up\n--- stdout:\n{}\n--- stderr:\n{}",
            server.brood.stdout_str(),
            server.brood.stderr_str()
        );
        server
    }

    fn pid_of(&self, label: &str) -> i32 {
        let reply = try_request(&self.sock, &json!({"verb": "status"})).expect("status");
        reply["programs"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["label"] == label))
            .and_then(|p| p["pid"].as_i64())
            .unwrap_or_else(|| panic!("{label} has no pid: {reply}")) as i32
    }

    /// Waits until brood's stdout has a line `LABEL | text` for which
    /// `pred` holds.
    fn wait_line(&self, label: &str, what: &str, pred: impl Fn(&str) -> bool) {
        self.brood.wait_stdout(what, |out| {
            out.lines()
                .filter_map(split_prefixed)
                .any(|(l, text)| l == label && pred(text))
        });
    }

    fn stop(self) -> Output {
        self.brood.signal(Signal::SIGTERM);
        let out = self.brood.finish();
        out.assert_no_panic();
        out
    }
}

fn try_request(sock: &Path, req: &Value) -> Result<Value, String> {
    let mut stream = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("{req}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("not JSON ({e}): {line:?}"))
}

/// `brood ctl --socket SOCK attach LABEL` on a pseudo-terminal of its own
/// (its controlling terminal, in a new session), started at `rows`x`cols`.
struct AttachPty {
    master: File,
    /// The terminal's mode before the client started.
    initial: (u64, u64, u64, u64),
    child: Option<Child>,
    pid: i32,
    output: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl AttachPty {
    fn start(sock: &Path, label: &str, rows: u16, cols: u16) -> AttachPty {
        let ws = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&ws), None).expect("openpty");
        let slave: OwnedFd = pty.slave;
        let initial = mode_bits(&termios::tcgetattr(slave.as_fd()).expect("tcgetattr"));
        let mut cmd = Command::new(brood_bin());
        cmd.arg("ctl")
            .arg("--socket")
            .arg(sock)
            .arg("attach")
            .arg(label)
            .env_remove("RUST_LOG")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start brood ctl attach");
        // The Command holds our copies of the slave: the master reads EOF
        // only once they are closed too.
        drop(cmd);
        let pid = child.id() as i32;
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut src = File::from(pty.master.try_clone().unwrap());
        let sink = output.clone();
        let reader = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the client and its terminal are gone.
            while let Ok(n) = src.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        AttachPty {
            master: File::from(pty.master),
            initial,
            child: Some(child),
            pid,
            output,
            reader: Some(reader),
        }
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    fn wait_output(&self, what: &str, pred: impl Fn(&str) -> bool) {
        if !try_wait_for(DEADLINE, || pred(&self.output())) {
            panic!(
                "timed out waiting for the client's terminal to show {what}\n--- terminal:\n{}",
                self.output()
            );
        }
    }

    /// Types `bytes` on the client's terminal.
    fn type_keys(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("type on the pty");
    }

    /// The client's terminal mode (on a master, the kernel answers for
    /// the slave).
    fn mode(&self) -> Termios {
        termios::tcgetattr(self.master.as_fd()).expect("tcgetattr")
    }

    fn wait_raw(&self) {
        let raw = try_wait_for(DEADLINE, || !self.mode().local_flags.contains(LocalFlags::ICANON));
        assert!(
            raw,
            "the client never put its terminal in raw mode\n--- terminal:\n{}",
            self.output()
        );
    }

    /// Resizes the client's terminal: the kernel sends it SIGWINCH.
    fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: a valid winsize the call only reads, on our own master.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&self.master),
                libc::TIOCSWINSZ,
                &ws,
            )
        };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// Waits for the client to exit (within the deadline) and returns its
    /// exit code and everything its terminal showed.
    fn wait_exit(mut self) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("waited twice");
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("brood ctl attach did not exit\n--- terminal:\n{}", self.output());
            }
            thread::sleep(Duration::from_millis(10));
        };
        // The reader ends at EIO now that the session's last process is gone.
        if let Some(r) = self.reader.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !r.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
        }
        (status.code(), self.output())
    }
}

impl Drop for AttachPty {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// The flags raw mode changes, to compare a terminal's mode before and
/// after a session.
fn mode_bits(t: &Termios) -> (u64, u64, u64, u64) {
    (
        t.input_flags.bits() as u64,
        t.output_flags.bits() as u64,
        t.local_flags.bits() as u64,
        t.control_flags.bits() as u64,
    )
}

/// A program that says `ready`, echoes `got LINE` for each line it reads
/// and `size ROWSxCOLS` on each SIGWINCH.
const ECHO_TTY: &str = r#"
[program.ed]
command = ["python3", "-c", """
import os, signal, sys
def winch(*_):
    size = os.get_terminal_size(0)
    print(f"size {size.lines}x{size.columns}", flush=True)
signal.signal(signal.SIGWINCH, winch)
print("ready", flush=True)
for line in sys.stdin:
    print("got", line.strip(), flush=True)
"""]
tty = true
stop_timeout = "2s"

[program.plain]
command = ["sleep", "1000"]
stop_timeout = "1s"
"#;

// ---------------------------------------------------------------------------
// Running on a terminal

#[test]
fn tty_child_runs_on_a_terminal_in_a_session_of_its_own() {
    let config = r#"
[program.t]
shell = '''
for fd in 0 1 2; do test -t $fd && echo "fd $fd is a tty"; done
awk '{ print ($6 == $1 ? "session leader" : "no session"), ($7 != 0 ? "with a controlling tty" : "without a tty") }' /proc/$$/stat
'''
tty = true
restart = "never"

[program.p]
shell = "test -t 1 || echo 'not a tty'"
restart = "never"
"#;
    let brood = Brood::new("tty-isatty");
    let dir = brood.dir().to_path_buf();
    std::fs::write(dir.join("brood.toml"), config).unwrap();
    let events = brood.events_path();
    let out = brood
        .raw_args([
            "run".as_ref(),
            "--events".as_ref(),
            events.as_os_str(),
            "-f".as_ref(),
            dir.join("brood.toml").as_os_str(),
        ])
        .run();
    out.assert_code(0).assert_no_panic();
    let lines: Vec<(String, String)> = out
        .stdout_lines()
        .iter()
        .filter_map(|l| split_prefixed(l).map(|(a, b)| (a.to_owned(), b.to_owned())))
        .collect();
    for want in [
        "fd 0 is a tty",
        "fd 1 is a tty",
        "fd 2 is a tty",
        "session leader with a controlling tty",
    ] {
        assert!(
            lines.contains(&("t.1".into(), want.into())),
            "t.1 | {want} missing{}",
            out.context()
        );
    }
    assert!(
        lines.contains(&("p.1".into(), "not a tty".into())),
        "{}",
        out.context()
    );
}

#[test]
fn tty_output_is_framed_without_stray_cr_and_keeps_colors_and_lone_cr() {
    let config = r#"
[program.t]
shell = '''printf 'one\n'; printf 'two\r\n'; printf 'red \033[31mX\033[0m\n'; printf 'a\rb\n'; printf 'last'; exit 0'''
tty = true
restart = "never"
"#;
    let brood = Brood::new("tty-frame");
    let dir = brood.dir().to_path_buf();
    std::fs::write(dir.join("brood.toml"), config).unwrap();
    let events = brood.events_path();
    let out = brood
        .raw_args([
            "run".as_ref(),
            "--events".as_ref(),
            events.as_os_str(),
            "-f".as_ref(),
            dir.join("brood.toml").as_os_str(),
        ])
        .run();
    out.assert_code(0).assert_no_panic();
    let stdout = out.stdout_str();
    let texts: Vec<&str> = stdout
        .lines()
        .filter_map(split_prefixed)
        .filter(|(l, _)| *l == "t.1")
        .map(|(_, t)| t)
        .collect();
    // ONLCR makes every \n a \r\n, and the program's own \r\n a \r\r\n:
    // both are one line end. The lone \r and the colors are the program's.
    assert_eq!(
        texts,
        ["one", "two", "red \x1b[31mX\x1b[0m", "a\rb", "last"],
        "{}",
        out.context()
    );
    assert!(
        !stdout.contains("\r\n") && !stdout.contains("\r\r"),
        "a CR at a line end{}",
        out.context()
    );
}

#[test]
fn tty_output_arrives_line_by_line_while_the_program_runs() {
    // Python buffers a pipe's output in blocks and a terminal's by line:
    // on a tty the first line shows up while the program still waits.
    let config = r#"
[program.slow]
command = ["python3", "-c", """
import os, time
print("first")
while not os.path.exists("go"):
    time.sleep(0.01)
print("second")
while True:
    time.sleep(1)
"""]
tty = true
stop_timeout = "1s"
"#;
    let server = Server::start("tty-prompt", config);
    server.wait_line("slow.1", "the first line before the second is allowed", |t| {
        t == "first"
    });
    assert!(!server.brood.stdout_str().contains("second"));
    std::fs::write(server.brood.dir().join("go"), "").unwrap();
    server.wait_line("slow.1", "the second line", |t| t == "second");
    server.stop();
}

// ---------------------------------------------------------------------------
// Attaching

#[test]
fn attach_passes_keys_output_and_window_size_and_detaches_with_ctrl_bracket() {
    let server = Server::start("tty-attach", ECHO_TTY);
    server.wait_line("ed.1", "ready", |t| t == "ready");
    let pid = server.pid_of("ed.1");

    let mut client = AttachPty::start(&server.sock, "ed.1", 30, 100);
    let before = client.initial;
    client.wait_output("the attach note", |o| o.contains("attached to ed.1"));
    client.wait_raw();
    // The client's size at the start reaches the program (brood's own
    // default is 80x24, so it changes and the program gets SIGWINCH).
    server.wait_line("ed.1", "the client's size", |t| t == "size 30x100");

    client.type_keys(b"hello\r");
    client.wait_output("the program's answer", |o| o.contains("got hello"));
    // The console gets it too, prefixed as usual.
    server.wait_line("ed.1", "the answer on the console", |t| t == "got hello");

    client.resize(40, 120);
    server.wait_line("ed.1", "the new size", |t| t == "size 40x120");
    client.wait_output("the new size on the client", |o| o.contains("size 40x120"));

    client.type_keys(&[0x1d]);
    let (code, shown) = {
        let mode_after = {
            // Read the mode through a second handle: wait_exit consumes the client.
            let master = client.master.try_clone().unwrap();
            move || mode_bits(&termios::tcgetattr(master.as_fd()).unwrap())
        };
        let result = client.wait_exit();
        assert_eq!(
            mode_after(),
            before,
            "the client's terminal mode was not restored"
        );
        result
    };
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("detached from ed.1"), "{shown}");

    // The program lives on, with the same pid, and still answers.
    assert_eq!(server.pid_of("ed.1"), pid);
    assert!(proc_state(pid).is_some(), "ed.1 (pid {pid}) is gone");
    let mut again = AttachPty::start(&server.sock, "ed.1", 30, 100);
    again.wait_raw();
    again.type_keys(b"still here\r");
    again.wait_output("an answer on a second attach", |o| o.contains("got still here"));
    again.type_keys(&[0x1d]);
    assert_eq!(again.wait_exit().0, Some(0));
    server.stop();
}

#[test]
fn attach_protocol_frames_sent_with_the_request_are_input() {
    // A client of the raw protocol that does not wait for the reply: the
    // bytes after the request line are already the stream's.
    let server = Server::start("tty-frames", ECHO_TTY);
    server.wait_line("ed.1", "ready", |t| t == "ready");
    let mut stream = UnixStream::connect(&server.sock).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut bytes = b"{\"verb\":\"attach\",\"target\":\"ed.1\"}\n".to_vec();
    bytes.extend([0, 0, 7]);
    bytes.extend(b"early\r\n");
    bytes.extend([1, 0, 4, 0, 33, 0, 77]);
    stream.write_all(&bytes).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let reply: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["label"], "ed.1", "{reply}");
    server.wait_line("ed.1", "the early keys", |t| t == "got early");
    server.wait_line("ed.1", "the framed size", |t| t == "size 33x77");
    // The raw output reaches the client, CR LF and all.
    let mut seen = Vec::new();
    let found = try_wait_for(DEADLINE, || {
        let mut buf = [0u8; 4096];
        if let Ok(n) = reader.read(&mut buf) {
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).contains("got early\r\n")
    });
    assert!(found, "{:?}", String::from_utf8_lossy(&seen));
    // An unknown frame kind ends the connection; the program runs on.
    stream.write_all(&[9, 0, 0]).unwrap();
    let closed = try_wait_for(DEADLINE, || {
        let mut buf = [0u8; 4096];
        matches!(reader.read(&mut buf), Ok(0) | Err(_))
    });
    assert!(closed, "the connection stayed open after an unknown frame");
    assert!(proc_state(server.pid_of("ed.1")).is_some());
    server.stop();
}

#[test]
fn a_second_client_is_refused_while_one_is_attached() {
    let server = Server::start("tty-second", ECHO_TTY);
    let mut first = AttachPty::start(&server.sock, "ed.1", 24, 80);
    first.wait_raw();
    let second = AttachPty::start(&server.sock, "ed.1", 24, 80);
    let (code, shown) = second.wait_exit();
    assert_eq!(code, Some(1), "{shown}");
    assert!(shown.contains("attached to another client"), "{shown}");
    first.type_keys(&[0x1d]);
    assert_eq!(first.wait_exit().0, Some(0));
    server.stop();
}

#[test]
fn attach_to_a_program_without_a_terminal_is_refused() {
    let server = Server::start("tty-refuse", ECHO_TTY);
    let client = AttachPty::start(&server.sock, "plain.1", 24, 80);
    let (code, shown) = client.wait_exit();
    assert_eq!(code, Some(1), "{shown}");
    assert!(
        shown.contains("plain.1 does not run on a terminal (set tty = true for program 'plain')"),
        "{shown}"
    );
    let unknown = AttachPty::start(&server.sock, "nope.1", 24, 80);
    let (code, shown) = unknown.wait_exit();
    assert_eq!(code, Some(1), "{shown}");
    assert!(shown.contains("no instance 'nope.1'"), "{shown}");
    server.stop();
}

#[test]
fn attach_restores_the_terminal_when_the_client_gets_sigterm() {
    let server = Server::start("tty-sigterm", ECHO_TTY);
    let client = AttachPty::start(&server.sock, "ed.1", 24, 80);
    let master = client.master.try_clone().unwrap();
    let before = client.initial;
    client.wait_raw();
    kill(Pid::from_raw(client.pid), Signal::SIGTERM).unwrap();
    let (code, shown) = client.wait_exit();
    assert_eq!(code, Some(1), "{shown}");
    assert_eq!(
        mode_bits(&termios::tcgetattr(master.as_fd()).unwrap()),
        before,
        "mode not restored after SIGTERM\n{shown}"
    );
    // The program was not touched.
    server.wait_line("ed.1", "ready", |t| t == "ready");
    assert!(proc_state(server.pid_of("ed.1")).is_some());
    server.stop();
}

#[test]
fn attach_ends_when_the_program_exits() {
    let config = r#"
[program.brief]
command = ["python3", "-c", "import sys; print('bye', flush=True); sys.stdin.readline()"]
tty = true
restart = "never"
stop_timeout = "1s"

[program.keep]
command = ["sleep", "1000"]
stop_timeout = "1s"
"#;
    let server = Server::start("tty-ends", config);
    let mut client = AttachPty::start(&server.sock, "brief.1", 24, 80);
    client.wait_raw();
    client.type_keys(b"\r");
    let (code, shown) = client.wait_exit();
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("brief.1's terminal closed"), "{shown}");
    server.stop();
}

// ---------------------------------------------------------------------------
// Config

#[test]
fn tty_must_be_a_boolean_and_excludes_stdin() {
    let cases = [
        (
            "[program.a]\ncommand = [\"true\"]\ntty = \"yes\"\n",
            "brood.toml:3:7",
        ),
        (
            "[program.a]\ncommand = [\"true\"]\ntty = true\nstdin = \"null\"\n",
            "stdin cannot be set with tty = true",
        ),
    ];
    for (config, want) in cases {
        let brood = Brood::new("tty-config");
        let dir = brood.dir().to_path_buf();
        std::fs::write(dir.join("brood.toml"), config).unwrap();
        let out = brood.raw_args(["check", "-f", "brood.toml"]).run();
        out.assert_code(2);
        assert!(out.stderr_str().contains(want), "{want}{}", out.context());
    }
}

// ---------------------------------------------------------------------------
// Export

#[test]
fn export_maps_tty_to_a_container_tty_and_leaves_it_out_of_a_unit_by_name() {
    let brood = Brood::new("tty-export");
    let dir = brood.dir().to_path_buf();
    std::fs::write(
        dir.join("brood.toml"),
        "[program.repl]\ncommand = [\"python3\", \"-q\"]\ntty = true\nstop_timeout = \"1s\"\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let b = Brood::new("tty-export-run");
        let mut argv: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        argv.extend(["-f".into(), dir.join("brood.toml").into()]);
        argv.extend(["-o".into(), dir.join(args[1]).into()]);
        b.raw_args(argv).run()
    };
    let k8s = run(&["export", "kubernetes", "--image", "img", "--app", "demo"]);
    k8s.assert_code(0);
    let manifest = std::fs::read_to_string(dir.join("kubernetes/demo-repl.yaml")).expect("the Deployment");
    assert!(
        manifest.contains("          stdin: true\n          tty: true\n"),
        "{manifest}"
    );
    let systemd = run(&["export", "systemd", "--app", "demo"]);
    systemd.assert_code(0);
    assert!(
        systemd
            .stderr_str()
            .contains("program 'repl': tty = true has no equivalent in a unit"),
        "{}",
        systemd.context()
    );
    let unit = std::fs::read_to_string(dir.join("systemd/demo-repl@.service")).expect("the unit");
    assert!(unit.contains("# tty = true: left out"), "{unit}");
}
