//! The control socket inside the loop: accepting clients, reading their
//! requests, answering, and streaming `logs -f`.

use std::collections::HashMap;
use std::io::{self, Read, Write};

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

pub const LISTENER: Token = Token(4);
pub const FIRST_CLIENT: usize = 1 << 40;

pub struct ControlServer {
    pub bound: Bound,
    clients: HashMap<usize, Client>,
    next_client: usize,
    /// Recent output, one ring per program.
    pub rings: HashMap<ProgramId, Ring>,
}

struct Client {
    stream: UnixStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    follow: Option<Follow>,
    events: Option<EventFollow>,
    /// Close once `out` is written (peer finished, or refused).
    closing: bool,
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
            let (mut stream, _) = match ctl.bound.listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("control socket: accept failed: {e}");
                    return;
                }
            };
            let refusal = if ctl.clients.len() >= MAX_CLIENTS {
                Some("too many clients".to_string())
            } else {
                socket::peer_allowed(&stream).err()
            };
            if let Some(reason) = refusal {
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
                    closing: false,
                },
            );
        }
    }

    pub(super) fn on_client(&mut self, token: Token) {
        let id = token.0 - FIRST_CLIENT;
        let mut requests = Vec::new();
        {
            let Some(ctl) = self.control.as_mut() else { return };
            let Some(client) = ctl.clients.get_mut(&id) else {
                return;
            };
            let mut buf = [0u8; 8192];
            loop {
                match client.stream.read(&mut buf) {
                    Ok(0) => {
                        // A follower hanging up ends its stream; anyone else
                        // still gets the answers to what it sent.
                        client.closing = true;
                        if client.follow.is_some() {
                            client.out.clear();
                        }
                        break;
                    }
                    Ok(n) => {
                        client.inbuf.extend_from_slice(&buf[..n]);
                        while let Some(pos) = client.inbuf.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = client.inbuf.drain(..=pos).collect();
                            requests.push(line);
                        }
                        if client.inbuf.len() > MAX_REQUEST {
                            client.inbuf = Vec::new();
                            let err = json!({"ok": false, "error": "request line too long"});
                            client.out.extend_from_slice(format!("{err}\n").as_bytes());
                            client.closing = true;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        client.closing = true;
                        client.out.clear();
                        break;
                    }
                }
            }
        }
        for line in requests {
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let reply = match parse_request(line) {
                Ok(req) => self.handle_request(id, req),
                Err(e) => json!({"ok": false, "error": e}),
            };
            self.queue_to_client(id, &reply);
        }
        self.flush_client(id);
    }

    fn queue_to_client(&mut self, id: usize, value: &Value) {
        let Some(client) = self.control.as_mut().and_then(|c| c.clients.get_mut(&id)) else {
            return;
        };
        client.out.extend_from_slice(value.to_string().as_bytes());
        client.out.push(b'\n');
        if client.out.len() > MAX_PENDING {
            // A client that does not read its answers is dropped.
            client.out.clear();
            client.closing = true;
        }
    }

    fn flush_client(&mut self, id: usize) {
        let Some(ctl) = self.control.as_mut() else { return };
        let Some(client) = ctl.clients.get_mut(&id) else {
            return;
        };
        while !client.out.is_empty() {
            match client.stream.write(&client.out) {
                Ok(0) => break,
                Ok(n) => {
                    client.out.drain(..n);
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
        if client.closing && client.out.is_empty() {
            if let Some(mut c) = ctl.clients.remove(&id) {
                let _ = self.poll.registry().deregister(&mut c.stream);
            }
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
        }
        json!({"ok": true, "lines": recent})
    }

    /// Send new output to every `logs -f` client, and new events to every
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
            let mut sent = false;
            if let Some(ring) = ctl.rings.get(&program) {
                let keep = |l: &LogLine| label.as_ref().is_none_or(|want| &l.label == want);
                let cursor = follow.cursors.entry(program).or_insert(0);
                for l in ring.since(*cursor, keep) {
                    client.out.extend_from_slice(line_json(&l).to_string().as_bytes());
                    client.out.push(b'\n');
                    sent = true;
                }
                *cursor = ring.next_seq();
            }
            if client.out.len() > MAX_PENDING {
                client.out.clear();
                client.closing = true;
            }
            if sent || client.closing {
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
            if follow.next >= next {
                continue;
            }
            if follow.next < oldest || client.out.len() > MAX_PENDING {
                let why = format!(
                    "dropped: this client read events too slowly (missed from seq {}); reconnect with --since",
                    follow.next
                );
                client.out.clear();
                client
                    .out
                    .extend_from_slice(json!({"ok": false, "error": why}).to_string().as_bytes());
                client.out.push(b'\n');
                client.events = None;
                client.closing = true;
            } else {
                for line in self.events.since(follow.next) {
                    client.out.extend_from_slice(line.as_bytes());
                    client.out.push(b'\n');
                }
                follow.next = next;
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
