//! The control socket inside the loop: accepting clients, reading their
//! requests, answering, and streaming `logs -f`.
//!
//! Bounds, none of which can stall the loop: an answer is written whole
//! however long it is (it is bounded by what brood keeps: a status row per
//! instance, or a program's ring), but a client's next request is read only
//! once less than [`MAX_PENDING`] bytes wait for it, so one that sends
//! without reading holds one answer at most. A follower's backlog is capped
//! at [`MAX_PENDING`]: past it, lines wait in the ring, and a follower that
//! falls behind the ring is dropped with a last line saying why. A client
//! that sends no complete request and reads nothing for [`CLIENT_IDLE`] is
//! closed (followers excepted), so idle clients cannot hold the slots. At
//! [`MAX_CLIENTS`] brood stops accepting: the next clients wait in the
//! kernel's listen backlog until a slot frees.
//!
//! `attach` (a client on an instance's terminal) is in `attach`.

mod attach;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::UnixStream;
use mio::{Interest, Token};
use serde_json::{json, Value};

use super::{Driver, Supervisor};
use crate::control::ring::{LogLine, Ring};
use crate::control::socket::{self, Bound};
use crate::control::{parse_request, Request, MAX_CLIENTS, MAX_PENDING, MAX_REQUEST};
use crate::core::event::ShutdownReason;
use crate::core::ids::ProgramId;
use crate::core::instance::Input;
use crate::core::timers::Timer;

pub const LISTENER: Token = Token(4);
pub const FIRST_CLIENT: usize = 1 << 40;

/// How long a client may send no complete request and read nothing before
/// it is closed (a `logs -f` follower excepted).
pub const CLIENT_IDLE: Duration = Duration::from_secs(10);

pub struct ControlServer {
    pub bound: Bound,
    clients: HashMap<usize, Client>,
    next_client: usize,
    /// Recent output, one ring per program.
    pub rings: HashMap<ProgramId, Ring>,
    /// Not accepting (every slot taken, or out of fds): the next clients
    /// wait in the listen backlog until a client leaves.
    accept_paused: bool,
}

struct Client {
    stream: UnixStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    follow: Option<Follow>,
    /// A `ctl events -f` client.
    events: Option<EventFollow>,
    /// The peer finished sending: answer what it sent, then close.
    eof: bool,
    /// Attached to an instance's terminal: what it sends is input frames.
    attach: Option<attach::Attach>,
    /// Close once `out` is written (refused, dropped or broken): no more
    /// requests are read.
    closing: bool,
}

impl Client {
    /// Whether the client may be closed now: everything answered and
    /// written.
    fn done(&self) -> bool {
        self.out.is_empty() && (self.closing || (self.eof && self.inbuf.iter().all(u8::is_ascii_whitespace)))
    }

    /// A `logs -f` or `events -f` client, or one attached to a terminal:
    /// it may wait as long as brood lives, and is never idle.
    fn following(&self) -> bool {
        self.follow.is_some() || self.events.is_some() || self.attach.is_some()
    }
}

/// A `ctl events -f` client: the next sequence number to send.
struct EventFollow {
    next: u64,
}

struct Follow {
    target: String,
    /// Next sequence number to send, per program ring.
    cursors: HashMap<ProgramId, u64>,
}

impl ControlServer {
    pub fn new(bound: Bound, programs: impl IntoIterator<Item = ProgramId>) -> ControlServer {
        ControlServer {
            bound,
            clients: HashMap::new(),
            next_client: 0,
            rings: programs.into_iter().map(|p| (p, Ring::default())).collect(),
            accept_paused: false,
        }
    }
}

fn line_json(l: &LogLine) -> Value {
    json!({"label": l.label, "stream": if l.stderr { "stderr" } else { "stdout" }, "line": l.text})
}

fn respond(result: Result<Vec<String>, String>) -> Value {
    match result {
        Ok(labels) => json!({"ok": true, "affected": labels}),
        Err(e) => json!({"ok": false, "error": e}),
    }
}

impl Supervisor {
    pub(super) fn accept_clients(&mut self) {
        loop {
            let Some(ctl) = self.control.as_mut() else { return };
            if ctl.clients.len() >= MAX_CLIENTS {
                if !ctl.accept_paused {
                    log::info!("control socket: {MAX_CLIENTS} clients connected; the next ones wait");
                }
                ctl.accept_paused = true;
                return;
            }
            ctl.accept_paused = false;
            let (mut stream, _) = match ctl.bound.listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of fds, most likely: try again when a client
                    // leaves; meanwhile the next ones wait in the backlog.
                    log::warn!("control socket: accept failed: {e}");
                    ctl.accept_paused = !ctl.clients.is_empty();
                    return;
                }
            };
            if let Err(reason) = socket::peer_allowed(&stream) {
                log::warn!("control socket: {reason}");
                // Best effort: the socket buffer takes one short line.
                let _ = stream.write_all(format!("{}\n", json!({"ok": false, "error": reason})).as_bytes());
                continue;
            }
            let id = ctl.next_client;
            ctl.next_client += 1;
            let token = Token(FIRST_CLIENT + id);
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            {
                log::warn!("control socket: cannot watch a client: {e}");
                continue;
            }
            ctl.clients.insert(
                id,
                Client {
                    stream,
                    inbuf: Vec::new(),
                    out: Vec::new(),
                    follow: None,
                    events: None,
                    eof: false,
                    attach: None,
                    closing: false,
                },
            );
            self.timers
                .schedule(Timer::ClientIdle(id), Instant::now() + CLIENT_IDLE);
        }
    }

    pub(super) fn on_client(&mut self, token: Token) {
        let id = token.0 - FIRST_CLIENT;
        if self.is_attached(id) {
            self.read_attached(id);
            return;
        }
        // Answer what is complete, write, read more, until the client
        // would block (epoll is edge-triggered: nothing is left unread
        // unless the client's answers are over the bound, and then the
        // client's reading wakes this up again).
        loop {
            while let Some(line) = self.next_request(id) {
                self.answer(id, &line);
                if self.is_attached(id) {
                    // What follows `attach` is the attached stream's.
                    self.begin_attached_stream(id);
                    return;
                }
            }
            if !self.flush_client(id) || !self.read_client(id) {
                return;
            }
        }
    }

    /// The next complete request of a client that has room for its answer.
    /// A last line without its newline counts once the client sent EOF.
    fn next_request(&mut self, id: usize) -> Option<Vec<u8>> {
        let client = self.control.as_mut()?.clients.get_mut(&id)?;
        if client.closing || client.out.len() > MAX_PENDING {
            return None;
        }
        match memchr::memchr(b'\n', &client.inbuf) {
            Some(pos) => Some(client.inbuf.drain(..=pos).collect()),
            None if client.eof && !client.inbuf.is_empty() => Some(std::mem::take(&mut client.inbuf)),
            None => None,
        }
    }

    fn answer(&mut self, id: usize, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let reply = match parse_request(line) {
            Ok(req) => self.handle_request(id, req),
            Err(e) => json!({"ok": false, "error": e}),
        };
        self.queue_to_client(id, &reply);
        self.client_active(id);
    }

    /// One read of a client's requests. False when there is nothing to
    /// read now, or it must not be read (its answers are over the bound,
    /// it is closing).
    fn read_client(&mut self, id: usize) -> bool {
        let Some(client) = self.control.as_mut().and_then(|c| c.clients.get_mut(&id)) else {
            return false;
        };
        if client.closing || client.eof || client.out.len() > MAX_PENDING {
            return false;
        }
        let mut buf = [0u8; 8192];
        match client.stream.read(&mut buf) {
            Ok(0) => {
                // A follower hanging up ends its stream; anyone else still
                // gets the answers to what it sent, the last line too.
                client.eof = true;
                if client.following() {
                    client.out.clear();
                    client.closing = true;
                }
                true
            }
            Ok(n) => {
                client.inbuf.extend_from_slice(&buf[..n]);
                if client.inbuf.len() > MAX_REQUEST && memchr::memchr(b'\n', &client.inbuf).is_none() {
                    client.inbuf = Vec::new();
                    let err = json!({"ok": false, "error": "request line too long"});
                    client.out.extend_from_slice(format!("{err}\n").as_bytes());
                    client.closing = true;
                }
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(_) => {
                client.closing = true;
                client.out.clear();
                true
            }
        }
    }

    /// A client asked or read something: its idle deadline moves (a
    /// follower has none).
    fn client_active(&mut self, id: usize) {
        let follower = self
            .control
            .as_ref()
            .and_then(|c| c.clients.get(&id))
            .map(Client::following);
        if follower == Some(false) {
            self.timers
                .schedule(Timer::ClientIdle(id), Instant::now() + CLIENT_IDLE);
        }
    }

    /// A client's idle deadline passed: close it, saying why if it listens.
    pub(super) fn on_client_idle(&mut self, id: usize) {
        let Some(client) = self.control.as_mut().and_then(|c| c.clients.get_mut(&id)) else {
            return;
        };
        if client.following() {
            return;
        }
        log::debug!(
            "control socket: closing a client idle for {}s",
            CLIENT_IDLE.as_secs()
        );
        if client.out.is_empty() {
            let err = json!({"ok": false, "error": format!("no complete request within {}s: closing", CLIENT_IDLE.as_secs())});
            let _ = client.stream.write(format!("{err}\n").as_bytes());
        }
        self.remove_client(id);
    }

    fn queue_to_client(&mut self, id: usize, value: &Value) {
        let Some(client) = self.control.as_mut().and_then(|c| c.clients.get_mut(&id)) else {
            return;
        };
        client.out.extend_from_slice(value.to_string().as_bytes());
        client.out.push(b'\n');
    }

    /// Write what the client takes now; close it once it is done. False
    /// when the client is gone.
    fn flush_client(&mut self, id: usize) -> bool {
        let Some(client) = self.control.as_mut().and_then(|c| c.clients.get_mut(&id)) else {
            return false;
        };
        let mut wrote = false;
        while !client.out.is_empty() {
            match client.stream.write(&client.out) {
                Ok(0) => break,
                Ok(n) => {
                    client.out.drain(..n);
                    wrote = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    client.out.clear();
                    client.closing = true;
                    break;
                }
            }
        }
        if client.out.capacity() > 2 * MAX_PENDING && client.out.len() <= MAX_PENDING {
            client.out.shrink_to(MAX_PENDING);
        }
        if client.done() {
            self.remove_client(id);
            return false;
        }
        if wrote {
            self.client_active(id);
        }
        true
    }

    /// Forget a client; a client waiting in the backlog may take its slot.
    fn remove_client(&mut self, id: usize) {
        self.timers.cancel(Timer::ClientIdle(id));
        let Some(ctl) = self.control.as_mut() else { return };
        if let Some(mut c) = ctl.clients.remove(&id) {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
        if ctl.accept_paused {
            self.accept_clients();
        }
    }

    fn handle_request(&mut self, id: usize, req: Request) -> Value {
        match req {
            Request::Status => json!({"ok": true, "programs": self.snapshot()}),
            Request::Start(t) => respond(self.request(&t, Input::Start)),
            Request::Stop(t) => respond(self.request(&t, Input::Stop)),
            Request::Restart(t) => respond(self.request(&t, Input::Restart)),
            Request::Signal { signal, target } => respond(self.signal_instances(&target, signal)),
            Request::Scale { name, count } => match self.scale(&name, count) {
                Ok(()) => json!({"ok": true, "name": name, "count": count}),
                Err(e) => json!({"ok": false, "error": e}),
            },
            Request::Logs {
                target,
                lines,
                follow,
            } => self.logs(id, target, lines, follow),
            Request::Events { since, follow } => self.events_reply(id, since, follow),
            Request::Reload => match self.reload() {
                Ok(fates) => json!({"ok": true, "programs": fates}),
                Err(e) => json!({"ok": false, "error": e}),
            },
            Request::Shutdown => {
                self.begin_shutdown(ShutdownReason::Ctl);
                json!({"ok": true})
            }
            Request::Attach(target) => self.attach(id, &target),
            Request::Reopen => {
                let files = self.logs.reopen_all(std::time::Instant::now());
                let reports = self.logs.take_reports();
                self.report_dropped(reports);
                json!({"ok": true, "files": files})
            }
        }
    }

    /// A logs target: a program (all its instances) or one label.
    fn log_filter(&self, target: &str) -> Option<(ProgramId, Option<String>)> {
        let Driver::Run(core) = &self.driver else {
            return None;
        };
        if let Some(p) = core.program_named(target) {
            return Some((p, None));
        }
        core.instances()
            .find(|i| i.label == target)
            .map(|i| (i.program, Some(i.label.clone())))
    }

    fn logs(&mut self, id: usize, target: String, lines: usize, follow: bool) -> Value {
        let Some((program, label)) = self.log_filter(&target) else {
            return json!({"ok": false, "error": format!("no program or instance '{target}'")});
        };
        let Some(ctl) = self.control.as_mut() else {
            return json!({"ok": false, "error": "no control"});
        };
        let keep = |l: &LogLine| label.as_ref().is_none_or(|want| &l.label == want);
        let recent: Vec<Value> = ctl
            .rings
            .get(&program)
            .map(|r| r.last(lines, keep).iter().map(line_json).collect())
            .unwrap_or_default();
        if follow {
            let cursors = ctl.rings.iter().map(|(p, r)| (*p, r.next_seq())).collect();
            if let Some(client) = ctl.clients.get_mut(&id) {
                client.follow = Some(Follow { target, cursors });
            }
            // A follower may wait for output as long as brood lives.
            self.timers.cancel(Timer::ClientIdle(id));
        }
        json!({"ok": true, "lines": recent})
    }

    /// Send new output to every `logs -f` client, at most [`MAX_PENDING`]
    /// unwritten bytes each; the rest waits in the ring. A follower that
    /// fell so far behind that the ring dropped lines it had not been sent
    /// is dropped, with a last line saying why. And new events to every
    /// `events -f` client.
    pub(super) fn serve_followers(&mut self) {
        self.serve_event_followers();
        let Some(ctl) = self.control.as_ref() else { return };
        let followers: Vec<(usize, String)> = ctl
            .clients
            .iter()
            .filter_map(|(id, c)| c.follow.as_ref().map(|f| (*id, f.target.clone())))
            .collect();
        for (id, target) in followers {
            let Some((program, label)) = self.log_filter(&target) else {
                continue;
            };
            let Some(ctl) = self.control.as_mut() else { return };
            let Some(client) = ctl.clients.get_mut(&id) else {
                continue;
            };
            let Some(follow) = client.follow.as_mut() else {
                continue;
            };
            if client.closing {
                continue;
            }
            let Some(ring) = ctl.rings.get(&program) else {
                continue;
            };
            let cursor = follow.cursors.entry(program).or_insert(0);
            if ring.first_seq() > *cursor {
                log::warn!("control socket: dropping a `logs -f {target}` client that fell behind");
                let err = json!({"ok": false, "error": format!(
                    "logs -f {target}: dropped, this client read too slowly and missed lines \
                     (brood keeps the last {} lines or {} MiB of each program)",
                    crate::control::ring::MAX_LINES,
                    crate::control::ring::MAX_BYTES / (1024 * 1024)
                )});
                client.out.extend_from_slice(format!("{err}\n").as_bytes());
                client.closing = true;
                self.flush_client(id);
                continue;
            }
            let before = client.out.len();
            let keep = |l: &LogLine| label.as_ref().is_none_or(|want| &l.label == want);
            for l in ring.since(*cursor, |_| true) {
                if client.out.len() > MAX_PENDING {
                    break;
                }
                *cursor = l.seq + 1;
                if keep(&l) {
                    client.out.extend_from_slice(line_json(&l).to_string().as_bytes());
                    client.out.push(b'\n');
                }
            }
            if client.out.len() > before {
                self.flush_client(id);
            }
        }
    }

    /// `ctl events`: the kept events from `since` on, and with `follow`
    /// every later one. The snapshot and the subscription are taken in the
    /// same turn of the loop, so nothing falls between them or comes twice.
    fn events_reply(&mut self, id: usize, since: u64, follow: bool) -> Value {
        let recent: Vec<Value> = self
            .events
            .since(since)
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        let next = self.events.next_seq();
        if follow {
            if let Some(client) = self.control.as_mut().and_then(|c| c.clients.get_mut(&id)) {
                client.events = Some(EventFollow { next });
            }
            // A follower may wait for events as long as brood lives.
            self.timers.cancel(Timer::ClientIdle(id));
        }
        json!({"ok": true, "events": recent})
    }

    /// Send new events to every `events -f` client. One that fell so far
    /// behind that its next event is no longer kept, or that does not read
    /// what it is sent, is told so and dropped.
    fn serve_event_followers(&mut self) {
        let oldest = self.events.oldest_seq();
        let next = self.events.next_seq();
        let Some(ctl) = self.control.as_mut() else { return };
        let mut touched = Vec::new();
        for (id, client) in ctl.clients.iter_mut() {
            let Some(follow) = client.events.as_mut() else {
                continue;
            };
            if client.closing || follow.next >= next {
                continue;
            }
            if follow.next < oldest {
                // After whole lines (a line being written is finished first).
                let why = format!(
                    "dropped: this client read events too slowly (missed from seq {}); reconnect with --since",
                    follow.next
                );
                client
                    .out
                    .extend_from_slice(json!({"ok": false, "error": why}).to_string().as_bytes());
                client.out.push(b'\n');
                client.events = None;
                client.closing = true;
            } else if client.out.len() <= MAX_PENDING {
                for line in self.events.since(follow.next) {
                    client.out.extend_from_slice(line.as_bytes());
                    client.out.push(b'\n');
                }
                follow.next = next;
            } else {
                // Its backlog is full: the events wait in what brood keeps.
                continue;
            }
            touched.push(*id);
        }
        for id in touched {
            self.flush_client(id);
        }
    }

    /// End every follower's stream at shutdown, so `logs -f` returns.
    pub(super) fn close_clients(&mut self) {
        let Some(ctl) = self.control.as_mut() else { return };
        // Nobody new is let in now.
        ctl.accept_paused = false;
        let ids: Vec<usize> = ctl.clients.keys().copied().collect();
        for id in &ids {
            if let Some(c) = ctl.clients.get_mut(id) {
                c.closing = true;
            }
        }
        for id in ids {
            self.flush_client(id);
        }
        if let Some(ctl) = self.control.as_ref() {
            ctl.bound.remove();
        }
    }
}
