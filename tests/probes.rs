//! The readiness and health building blocks (`brood::probe`) against real
//! peers on loopback only (127.0.0.1): python's `http.server`, a handler
//! that answers 500, a closed port, a listener that never answers, a
//! listener whose backlog is full; `systemd-notify` and a python sender on
//! the notify socket; a real child writing to its notification fd through
//! the spawn core.
//!
//! Each test drives the component with a small mio loop, as the supervisor
//! will: register under a token, feed it the token's events, keep the
//! deadline outside. Every process a test starts runs in its own process
//! group and is killed by group and reaped when the test ends. The tests
//! hold one lock each: one of them predicts fd numbers, and the pending
//! checks measure time windows.

mod util;

use std::io::{BufRead, Read};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use brood::probe::fd::ready_pipe;
use brood::probe::net::{parse_http_url, Check, Outcome, Target};
use brood::probe::notify::{pgid_of, runtime_dir, Drained, Notification, NotifySocket};
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use util::TempDir;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const TOKEN: Token = Token(7);
/// Long enough for anything on loopback; a test that gets there failed.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long a check that must stay pending is watched.
const PENDING_WINDOW: Duration = Duration::from_millis(400);

// ---------------------------------------------------------------------------
// Helpers

/// A child in its own process group, killed by group and reaped on drop.
struct Proc(Child);

impl Proc {
    fn start(cmd: &mut Command) -> Proc {
        Proc(cmd.process_group(0).spawn().expect("start a test peer"))
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// The first line of its stdout, within [`DEADLINE`] (the read is
    /// guarded by poll, so a peer that hangs fails the test instead).
    fn first_line(&mut self) -> String {
        let out = self.0.stdout.as_mut().expect("piped stdout");
        let mut fds = [nix::poll::PollFd::new(out.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ms = DEADLINE.as_millis() as u16;
        let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).expect("poll");
        assert!(ready > 0, "the peer printed nothing within {DEADLINE:?}");
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line).expect("read");
        line
    }
}

impl Proc {
    /// Wait for it to exit 0, within [`DEADLINE`].
    fn wait_success(&mut self) {
        let mut status = None;
        util::wait_for(DEADLINE, "a test peer to exit", || {
            status = self.0.try_wait().expect("try_wait");
            status.is_some()
        });
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// python's own `http.server` on 127.0.0.1, an ephemeral port.
fn http_server(dir: &Path) -> (Proc, u16) {
    let mut p = Proc::start(
        Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "0",
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    // "Serving HTTP on 127.0.0.1 port 43567 (http://127.0.0.1:43567/) ..."
    let line = p.first_line();
    let port = line
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (p, port)
}

/// A server that answers every GET with `code`.
fn status_server(code: u16) -> (Proc, u16) {
    const SERVER: &str = r#"
import http.server, sys
code = int(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
    let mut p = Proc::start(
        Command::new("python3")
            .args(["-c", SERVER, &code.to_string()])
            .stdout(Stdio::piped()),
    );
    let port = p.first_line().trim().parse().expect("a port");
    (p, port)
}

/// Drive one check until it ends or `limit` passes (the loop's deadline):
/// the outcome, or None when it was still pending.
fn drive(poll: &mut Poll, check: &mut Check, limit: Duration) -> Option<Outcome> {
    let deadline = Instant::now() + limit;
    let mut events = Events::with_capacity(8);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let before = Instant::now();
        poll.poll(&mut events, Some(left)).expect("poll");
        // The check must never hold the thread: every wake is prompt.
        assert!(
            before.elapsed() < left + Duration::from_millis(200),
            "poll overslept its timeout"
        );
        for ev in events.iter() {
            if ev.token() == TOKEN {
                let started = Instant::now();
                let outcome = check.on_event();
                assert!(started.elapsed() < Duration::from_millis(100), "on_event blocked");
                if outcome.is_some() {
                    return outcome;
                }
            }
        }
    }
}

fn run_check(target: Target, limit: Duration) -> (Option<Outcome>, Check, Poll) {
    let mut poll = Poll::new().expect("poll");
    let started = Instant::now();
    let mut check = match Check::start(&target, poll.registry(), TOKEN) {
        Ok(c) => c,
        Err(why) => return (Some(Outcome::Fail(why)), dummy_check(&poll), poll),
    };
    assert!(started.elapsed() < Duration::from_millis(100), "start blocked");
    let outcome = drive(&mut poll, &mut check, limit);
    (outcome, check, poll)
}

/// A finished check to hand back when start itself failed.
fn dummy_check(poll: &Poll) -> Check {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    Check::start(&Target::Tcp(addr), poll.registry(), Token(99)).expect("start")
}

fn http(port: u16, path: &str) -> Target {
    Target::Http(parse_http_url(&format!("http://127.0.0.1:{port}{path}")).expect("url"))
}

fn failed(outcome: Option<Outcome>) -> String {
    match outcome {
        Some(Outcome::Fail(why)) => why,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// A port that refuses connections: bound, then closed.
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

// ---------------------------------------------------------------------------
// tcp and http

#[test]
fn http_check_passes_on_python_http_server() {
    let _s = serial();
    let dir = TempDir::new("probe-http");
    let (_server, port) = http_server(dir.path());
    let (outcome, _, _) = run_check(http(port, "/"), DEADLINE);
    assert_eq!(outcome, Some(Outcome::Pass));
    // A 404 from the same server is a failure with its status.
    let (outcome, _, _) = run_check(http(port, "/no-such-file"), DEADLINE);
    assert_eq!(failed(outcome), "HTTP 404 File not found");
}

#[test]
fn http_check_fails_on_500() {
    let _s = serial();
    let (_server, port) = status_server(500);
    let (outcome, _, _) = run_check(http(port, "/health"), DEADLINE);
    assert_eq!(failed(outcome), "HTTP 500 Internal Server Error");
}

#[test]
fn http_check_passes_on_a_redirect() {
    let _s = serial();
    let (_server, port) = status_server(302);
    let (outcome, _, _) = run_check(http(port, "/"), DEADLINE);
    assert_eq!(outcome, Some(Outcome::Pass));
}

#[test]
fn tcp_check_passes_when_something_listens() {
    let _s = serial();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (outcome, _, _) = run_check(Target::Tcp(l.local_addr().unwrap()), DEADLINE);
    assert_eq!(outcome, Some(Outcome::Pass));
}

#[test]
fn tcp_and_http_checks_work_over_ipv6_loopback() {
    let _s = serial();
    let l = TcpListener::bind("[::1]:0").expect("bind ::1");
    let addr = l.local_addr().unwrap();
    assert_eq!(run_check(Target::Tcp(addr), DEADLINE).0, Some(Outcome::Pass));
    // That connection is first in the queue: out of the way.
    drop(l.accept().expect("accept"));
    let target = Target::Http(parse_http_url(&format!("http://[::1]:{}/", addr.port())).unwrap());
    let mut poll = Poll::new().unwrap();
    let mut check = Check::start(&target, poll.registry(), TOKEN).expect("start");
    let (mut conn, _) = l.accept().expect("accept");
    std::io::Write::write_all(&mut conn, b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
    assert_eq!(drive(&mut poll, &mut check, DEADLINE), Some(Outcome::Pass));
    drop(l);
    let why = failed(run_check(Target::Tcp(addr), DEADLINE).0);
    assert!(why.ends_with("connection refused"), "{why}");
}

#[test]
fn tcp_and_http_checks_fail_on_a_closed_port() {
    let _s = serial();
    let addr = closed_port();
    let why = failed(run_check(Target::Tcp(addr), DEADLINE).0);
    assert_eq!(why, format!("connect to {addr}: connection refused"));
    let why = failed(run_check(http(addr.port(), "/"), DEADLINE).0);
    assert_eq!(why, format!("connect to {addr}: connection refused"));
}

#[test]
fn http_check_stays_pending_on_a_server_that_never_answers() {
    let _s = serial();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().unwrap().port();
    let (outcome, check, poll) = run_check(http(port, "/health"), PENDING_WINDOW);
    assert_eq!(outcome, None, "nothing answered, so nothing is decided");
    assert_eq!(check.stage(), "waiting for the status line");
    // The server side got the whole request, as written.
    let (mut conn, _) = l.accept().expect("accept");
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut request = Vec::new();
    while !request.ends_with(b"\r\n\r\n") {
        let mut buf = [0u8; 512];
        let n = conn.read(&mut buf).expect("read the request");
        assert!(n > 0, "EOF inside the request: {request:?}");
        request.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(request).unwrap();
    assert!(
        text.starts_with(&format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n")),
        "{text}"
    );
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
    // The loop's deadline passed: it cancels the check.
    check.cancel(poll.registry());
}

#[test]
fn http_check_fails_when_the_server_closes_without_a_status_line() {
    let _s = serial();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().unwrap().port();
    let mut poll = Poll::new().unwrap();
    let mut check = Check::start(&http(port, "/"), poll.registry(), TOKEN).expect("start");
    let (conn, _) = l.accept().expect("accept");
    drop(conn);
    let why = failed(drive(&mut poll, &mut check, DEADLINE));
    assert!(
        why.contains("closed the connection") || why.contains("reset"),
        "{why}"
    );
}

/// A listener with a backlog of 0 and one connection it never accepts:
/// the kernel drops the next SYN, so a connect neither succeeds nor fails.
#[test]
fn tcp_check_stays_pending_without_blocking_on_a_full_backlog() {
    let _s = serial();
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    // listen() again on a listening socket sets its backlog.
    nix::sys::socket::listen(&l, nix::sys::socket::Backlog::new(0).unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    // Fill the queue until a connect hangs: that one shows it is full.
    let mut fillers = Vec::new();
    let full =
        (0..16).any(
            |_| match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => {
                    fillers.push(s);
                    false
                }
                Err(_) => true,
            },
        );
    assert!(full, "the accept queue never filled");
    let (outcome, check, poll) = run_check(Target::Tcp(addr), PENDING_WINDOW);
    assert_eq!(outcome, None, "a dropped SYN decides nothing");
    assert_eq!(check.stage(), "connecting");
    check.cancel(poll.registry());
}

// ---------------------------------------------------------------------------
// notify

/// Receive notifications until `want` of them arrived (the test's deadline
/// outside), each passed through `f` while its sender is still waiting.
fn receive(sock: &mut NotifySocket, want: usize, mut f: impl FnMut(&Notification)) -> Vec<Notification> {
    let mut poll = Poll::new().unwrap();
    poll.registry().register(sock, TOKEN, Interest::READABLE).unwrap();
    let mut events = Events::with_capacity(4);
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    // Datagrams sent before the registration raise an event too: epoll
    // reports a source that is readable when it is added.
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "got {} of {want} notifications", got.len());
        poll.poll(&mut events, Some(left)).unwrap();
        if events.iter().any(|e| e.token() == TOKEN) {
            while sock
                .recv_all(|n| {
                    f(&n);
                    got.push(n);
                })
                .unwrap()
                == Drained::Budget
            {}
        }
    }
    poll.registry().deregister(sock).unwrap();
    got
}

fn notify_socket(dir: &TempDir) -> (NotifySocket, std::path::PathBuf) {
    NotifySocket::bind(dir.path()).expect("bind the notify socket")
}

fn python_send(path: &Path, payloads: &[&[u8]]) -> Proc {
    const SEND: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for p in sys.argv[2:]:
    s.sendto(bytes.fromhex(p), sys.argv[1])
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", SEND]).arg(path);
    for p in payloads {
        cmd.arg(p.iter().map(|b| format!("{b:02x}")).collect::<String>());
    }
    Proc::start(&mut cmd)
}

#[test]
fn notify_python_sender_is_identified_by_its_credentials() {
    let _s = serial();
    let dir = TempDir::new("notify-py");
    let (mut sock, path) = notify_socket(&dir);
    let sender = python_send(&path, &[b"READY=1\nSTATUS=Accepting connections\n"]);
    let got = receive(&mut sock, 1, |_| {});
    let n = &got[0];
    assert!(n.ready);
    assert_eq!(n.status.as_deref(), Some("Accepting connections"));
    assert_eq!(n.pid, sender.pid(), "the kernel's pid, not a claim");
    assert_eq!(n.uid, nix::unistd::geteuid().as_raw());
}

#[test]
fn notify_systemd_notify_works_unchanged() {
    let _s = serial();
    let dir = TempDir::new("notify-sd");
    let (mut sock, path) = notify_socket(&dir);
    // As an instance would run it: from a shell, in the instance's group.
    let shell = Proc::start(
        Command::new("/bin/sh")
            .args([
                "-c",
                "systemd-notify --ready --status='up and running' && echo done",
            ])
            .env("NOTIFY_SOCKET", &path)
            .stdout(Stdio::piped()),
    );
    let group = shell.pid();
    let mut groups = Vec::new();
    // systemd-notify sends READY=1 and STATUS in one datagram, then
    // BARRIER=1 with a pipe end, and waits until brood closes that.
    let got = receive(&mut sock, 2, |n| groups.push(pgid_of(n.pid)));
    let n = &got[0];
    assert!(n.ready, "{n:?}");
    assert_eq!(n.status.as_deref(), Some("up and running"));
    assert!(!got[1].ready && got[1].status.is_none(), "{:?}", got[1]);
    // Looked up while the notification was being handled: the sender is
    // in the instance's group. (systemd-notify sends its parent's pid in
    // its credentials when the kernel lets it, as root; else its own.)
    assert_eq!(groups, [Some(group), Some(group)], "sender pid {}", n.pid);
    drop(got);
    // Released from its barrier, systemd-notify exits 0 at once.
    let mut shell = shell;
    assert_eq!(shell.first_line(), "done\n");
}

#[test]
fn notify_systemd_notify_status_and_watchdog() {
    let _s = serial();
    let dir = TempDir::new("notify-wd");
    let (mut sock, path) = notify_socket(&dir);
    let _p = Proc::start(
        Command::new("systemd-notify")
            .args(["--status=warming up", "WATCHDOG=1"])
            .env("NOTIFY_SOCKET", &path),
    );
    let got = receive(&mut sock, 1, |_| {});
    assert!(!got[0].ready);
    assert!(got[0].watchdog);
    assert_eq!(got[0].status.as_deref(), Some("warming up"));
}

#[test]
fn notify_oversized_datagrams_are_dropped_and_the_next_one_read() {
    let _s = serial();
    let dir = TempDir::new("notify-big");
    let (mut sock, path) = notify_socket(&dir);
    let mut big = b"STATUS=".to_vec();
    big.resize(5000, b'x');
    big.extend_from_slice(b"\nREADY=1");
    let _p = python_send(&path, &[&big, b"STATUS=small"]);
    let got = receive(&mut sock, 1, |_| {});
    assert_eq!(got.len(), 1);
    assert!(!got[0].ready, "the oversized datagram was dropped");
    assert_eq!(got[0].status.as_deref(), Some("small"));
}

#[test]
fn notify_recv_stops_at_its_budget() {
    let _s = serial();
    let dir = TempDir::new("notify-flood");
    let (mut sock, path) = notify_socket(&dir);
    // Ten fit in the kernel's queue on any setting (max_dgram_qlen).
    let payloads: Vec<Vec<u8>> = (0..10).map(|i| format!("STATUS={i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
    let mut sender = python_send(&path, &refs);
    sender.wait_success();
    let mut seen = Vec::new();
    let mut push = |n: Notification| seen.push(n.status.unwrap_or_default());
    assert_eq!(sock.recv_up_to(4, &mut push).unwrap(), Drained::Budget);
    assert_eq!(sock.recv_up_to(4, &mut push).unwrap(), Drained::Budget);
    assert_eq!(sock.recv_up_to(4, &mut push).unwrap(), Drained::All);
    let want: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(seen, want, "all of them, in order");
}

#[test]
fn notify_socket_is_private_and_removed_on_drop() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let _s = serial();
    let dir = runtime_dir().expect("a runtime dir");
    let meta = std::fs::symlink_metadata(&dir).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    let (sock, path) = NotifySocket::bind(&dir).expect("bind");
    assert!(path.as_os_str().len() <= 107, "{}", path.display());
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    drop(sock);
    assert!(!path.exists(), "the socket file stays behind");
}

#[test]
fn notify_socket_path_too_long_is_a_clear_error() {
    let _s = serial();
    let long = Path::new("/tmp").join("d".repeat(120));
    let e = NotifySocket::bind(&long).expect_err("a path longer than sun_path");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("longer than 107 bytes"), "{e}");
}

// ---------------------------------------------------------------------------
// fd: through the spawn core

mod spawned {
    use super::*;
    use brood::spawn::{plan, spawn_with, SpawnContext, SpawnError, Stdio as SpawnStdio};
    use nix::sys::wait::{waitpid, WaitStatus};

    fn sh(script: &str) -> (plan::Image, plan::CArray) {
        let image = plan::Image::new("/bin/sh".as_ref(), &[], None).unwrap();
        let argv = plan::build_argv("/bin/sh".as_ref(), &["-c".into(), script.into()], None, false).unwrap();
        (image, argv)
    }

    /// Reaps the child (and kills its group first) when the test ends.
    struct Reap(i32);
    impl Reap {
        /// Wait for it to exit by itself; nothing is left to kill after.
        fn wait(self) -> WaitStatus {
            let status = waitpid(Pid::from_raw(self.0), None).unwrap();
            std::mem::forget(self);
            status
        }
    }
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = killpg(Pid::from_raw(self.0), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(self.0), None);
        }
    }

    fn drive_pipe(pipe: &mut brood::probe::fd::ReadyPipe) -> Outcome {
        let mut poll = Poll::new().unwrap();
        poll.registry().register(pipe, TOKEN, Interest::READABLE).unwrap();
        let mut events = Events::with_capacity(4);
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no outcome from the notification fd");
            poll.poll(&mut events, Some(left)).unwrap();
            if events.iter().any(|e| e.token() == TOKEN) {
                if let Some(o) = pipe.on_readable() {
                    return o;
                }
            }
        }
    }

    fn context() -> SpawnContext {
        SpawnContext::new(Vec::new(), None).expect("spawn context")
    }

    #[test]
    fn fd_newline_from_a_real_child_is_ready() {
        let _s = serial();
        let ctx = context();
        let (mut pipe, extra) = ready_pipe(5).unwrap();
        // fd 5 is open across exec, and it is the only extra one.
        let (image, argv) = sh("echo ready >&5; exec sleep 30");
        let child = spawn_with(&ctx, &image, &argv, SpawnStdio::Capture, Some(extra)).expect("spawn");
        let _reap = Reap(child.pid.as_raw());
        assert_eq!(drive_pipe(&mut pipe), Outcome::Pass);
    }

    #[test]
    fn fd_closed_without_a_newline_is_reported() {
        let _s = serial();
        let ctx = context();
        let (mut pipe, extra) = ready_pipe(9).unwrap();
        // brood's copy of the write end is gone after the spawn, so the
        // child's exit is EOF.
        let (image, argv) = sh("printf starting >&9");
        let child = spawn_with(&ctx, &image, &argv, SpawnStdio::Capture, Some(extra)).expect("spawn");
        let reap = Reap(child.pid.as_raw());
        assert_eq!(
            drive_pipe(&mut pipe),
            Outcome::Fail("closed fd 9 without writing a newline".into())
        );
        assert_eq!(
            reap.wait(),
            WaitStatus::Exited(child.pid, 0),
            "the write to fd 9 worked"
        );
    }

    #[test]
    fn fd_target_not_named_is_closed_in_the_child() {
        let _s = serial();
        let ctx = context();
        let (_pipe, extra) = ready_pipe(6).unwrap();
        // Only fd 6 crosses exec: the pipe's own fds (both close-on-exec)
        // do not, so `>&N` on them fails.
        let src = extra.fd.as_raw_fd();
        let (image, argv) = sh(&format!("test -e /proc/self/fd/6 && ! (: >&{src}) 2>/dev/null"));
        let child = spawn_with(&ctx, &image, &argv, SpawnStdio::Inherit, Some(extra)).expect("spawn");
        let reap = Reap(child.pid.as_raw());
        assert_eq!(reap.wait(), WaitStatus::Exited(child.pid, 0));
    }

    /// The extra fd's target is the number the error pipe's write end
    /// gets: dup2 onto it would close the pipe, and an exec failure would
    /// then pass for success. spawn_with moves the pipe first.
    #[test]
    fn fd_target_on_the_error_pipe_still_reports_exec_failure() {
        let _s = serial();
        let ctx = context();
        let (_pipe, mut extra) = ready_pipe(3).unwrap();
        // With Stdio::Inherit the spawn makes only the error pipe, on the
        // two lowest free fds: find them.
        let probe = nix::unistd::dup(std::io::stdin().as_fd()).unwrap();
        let lowest = probe.as_raw_fd();
        drop(probe);
        extra.target = lowest + 1;
        let image = plan::Image::new("/nonexistent/prog".as_ref(), &[], None).unwrap();
        let argv = plan::build_argv("/nonexistent/prog".as_ref(), &[], None, false).unwrap();
        match spawn_with(&ctx, &image, &argv, SpawnStdio::Inherit, Some(extra)) {
            Err(SpawnError::Exec { pid, errno, .. }) => {
                assert_eq!(errno, nix::errno::Errno::ENOENT);
                let _ = waitpid(pid, None);
            }
            Ok(child) => {
                let _ = waitpid(child.pid, None);
                panic!("an exec failure passed for success");
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Config, through the binary

#[test]
fn a_bad_ready_or_health_key_is_a_config_error_with_its_position() {
    let dir = TempDir::new("probe-config");
    let cases = [
        (
            "[program.a]\ncommand = [\"x\"]\nready = { log = \"(\" }\n",
            ":3:17: program 'a': ready.log: invalid regex: unclosed group",
        ),
        (
            "[program.a]\ncommand = [\"x\"]\nhealth = { http = \"http://db/health\" }\n",
            ":3:19: program 'a': health.http: 'db' is not an IP address",
        ),
        (
            "[program.a]\ncommand = [\"x\"]\nready = { fd = 1 }\n",
            ":3:16: program 'a': ready.fd must be between 3 and 1023",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = dir.join(format!("c{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = util::Brood::new("probe-config")
            .raw_args(["run".into(), "-f".into(), path.clone().into_os_string()])
            .watchdog(Duration::from_secs(20))
            .run();
        out.assert_code(2);
        let err = out.stderr_str();
        assert!(err.contains(&format!("{}{want}", path.display())), "{err}");
    }
}
