//! `ctl attach`: a control client connected to an instance's terminal.
//!
//! After the JSON reply, the connection carries bytes (README, "The
//! protocol"): brood sends the pty's output raw, the client sends frames
//! ([`crate::control::attach_frame`]) of keys and of window sizes. One
//! client per instance at a time: two keyboards typing into one terminal
//! would interleave at random.
//!
//! Nothing here may block the loop. Keys wait in a bounded buffer until
//! the master takes them; while it is full brood reads no more of the
//! client (the kernel's socket buffer then holds the client back), and the
//! master's next writable event resumes it. Output is never held back for
//! a client: the console gets it as usual, and a client that does not read
//! its share (more than `MAX_PENDING` queued) is detached.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};

use mio::Token;
use nix::errno::Errno;
use serde_json::{json, Value};

use super::super::pipes;
use super::super::{Driver, Supervisor};
use crate::children::Stream;
use crate::control::{take_frames, ATTACH_INPUT, ATTACH_WINDOW, MAX_PENDING};
use crate::core::ids::ChildId;
use crate::core::timers::Timer;

/// Keys waiting for the terminal before brood stops reading the client.
const MAX_INPUT: usize = 64 * 1024;

pub(super) struct Attach {
    child: ChildId,
    /// Keys the terminal has not taken yet.
    to_master: Vec<u8>,
    /// Reading the client stopped with `to_master` full: the master's
    /// writability resumes it (epoll is edge-triggered: the client's data
    /// already waiting would never be announced again).
    paused: bool,
}

impl Supervisor {
    pub(super) fn is_attached(&self, id: usize) -> bool {
        self.control
            .as_ref()
            .and_then(|c| c.clients.get(&id))
            .is_some_and(|c| c.attach.is_some())
    }

    /// The `attach` verb: connect client `id` to `target`'s terminal.
    pub(super) fn attach(&mut self, id: usize, target: &str) -> Value {
        let refuse = |why: String| json!({"ok": false, "error": why});
        let Driver::Run(core) = &self.driver else {
            return refuse("attach needs brood run".to_string());
        };
        let Some(program) = core.instances().find(|i| i.label == target).map(|i| i.program) else {
            return refuse(match core.program_named(target) {
                Some(_) => {
                    format!("'{target}' is a program: attach to one of its instances, such as {target}.1")
                }
                None => format!("no instance '{target}'"),
            });
        };
        match self.programs.get(&program) {
            Some(p) if p.spec.attrs.tty => {}
            Some(p) => {
                return refuse(format!(
                    "{target} does not run on a terminal (set tty = true for program '{}')",
                    p.name
                ))
            }
            None => return refuse(format!("no instance '{target}'")),
        }
        let Some(ctl) = self.control.as_mut() else {
            return refuse("no control".to_string());
        };
        let Some(child) = self
            .children
            .values_mut()
            .find(|c| c.label == target && c.tty && c.state.leader_alive() && c.pipes[0].is_some())
        else {
            return refuse(format!("{target} is not running"));
        };
        if let Some(other) = child.attached {
            if ctl
                .clients
                .get(&other)
                .is_some_and(|c| c.attach.is_some() && !c.closing)
            {
                return refuse(format!(
                    "{target} is attached to another client already (one at a time)"
                ));
            }
        }
        let Some(client) = ctl.clients.get_mut(&id) else {
            return refuse("gone".to_string());
        };
        child.attached = Some(id);
        // An attached client may sit quietly as long as it likes.
        self.timers.cancel(Timer::ClientIdle(id));
        client.attach = Some(Attach {
            child: child.id,
            to_master: Vec::new(),
            paused: false,
        });
        log::info!("ctl: a client attached to {target}");
        json!({"ok": true, "label": target, "pid": child.pid})
    }

    /// The master of an attached client's terminal, while it is open.
    fn master_of(&self, id: usize) -> Option<RawFd> {
        let child = self.control.as_ref()?.clients.get(&id)?.attach.as_ref()?.child;
        let pipe = self.children.get(&child)?.pipes[Stream::Stdout as usize].as_ref()?;
        Some(pipe.fd.as_raw_fd())
    }

    /// Read what an attached client sent, within the input bound.
    pub(super) fn read_attached(&mut self, id: usize) {
        let mut buf = [0u8; 8192];
        loop {
            let full = self
                .control
                .as_ref()
                .and_then(|c| c.clients.get(&id))
                .and_then(|c| c.attach.as_ref())
                .is_none_or(|a| a.to_master.len() >= MAX_INPUT);
            if full {
                self.write_input(id);
            }
            let Some(client) = self.control.as_mut().and_then(|c| c.clients.get_mut(&id)) else {
                return;
            };
            let Some(attach) = client.attach.as_mut() else {
                return;
            };
            if attach.to_master.len() >= MAX_INPUT {
                attach.paused = true;
                break;
            }
            attach.paused = false;
            match client.stream.read(&mut buf) {
                // The client detached (or died): the instance runs on.
                Ok(0) => {
                    client.closing = true;
                    let child = attach.child;
                    if let Some(c) = self.children.get(&child) {
                        log::info!("ctl: a client detached from {}", c.label);
                    }
                    break;
                }
                Ok(n) => self.attached_input(id, buf[..n].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    client.out.clear();
                    client.closing = true;
                    break;
                }
            }
        }
        self.write_input(id);
        self.flush_client(id);
    }

    /// The client just attached: the rest of what it sent (after the
    /// request line) is frames; then read on.
    pub(super) fn begin_attached_stream(&mut self, id: usize) {
        let after = self
            .control
            .as_mut()
            .and_then(|c| c.clients.get_mut(&id))
            .map(|c| std::mem::take(&mut c.inbuf))
            .unwrap_or_default();
        self.attached_input(id, after);
        self.read_attached(id);
    }

    /// Bytes from an attached client: complete frames are acted on, a
    /// partial one waits for the rest.
    fn attached_input(&mut self, id: usize, bytes: Vec<u8>) {
        let Some(client) = self.control.as_mut().and_then(|c| c.clients.get_mut(&id)) else {
            return;
        };
        let Some(attach) = client.attach.as_mut() else {
            return;
        };
        let mut pending = bytes;
        if !client.inbuf.is_empty() {
            pending = [std::mem::take(&mut client.inbuf), pending].concat();
        }
        let mut window = None;
        for (kind, payload) in take_frames(&mut pending) {
            match (kind, payload.as_slice()) {
                (ATTACH_INPUT, keys) => attach.to_master.extend_from_slice(keys),
                (ATTACH_WINDOW, &[r1, r2, c1, c2]) => {
                    window = Some((u16::from_be_bytes([r1, r2]), u16::from_be_bytes([c1, c2])))
                }
                _ => {
                    // Not a client of this protocol: let it go.
                    client.closing = true;
                    client.attach = None;
                    return;
                }
            }
        }
        client.inbuf = pending;
        if let Some((rows, cols)) = window.filter(|(r, c)| *r > 0 && *c > 0) {
            if let Some(fd) = self.master_of(id) {
                let ws = libc::winsize {
                    ws_row: rows,
                    ws_col: cols,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                // SAFETY: `ws` is a valid winsize the call only reads; on a
                // master the kernel sizes the slave and, if the size
                // changed, sends SIGWINCH to its foreground group.
                unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
            }
        }
    }

    /// Write waiting keys to the terminal, as much as it takes now.
    fn write_input(&mut self, id: usize) {
        let fd = self.master_of(id);
        let Some(client) = self.control.as_mut().and_then(|c| c.clients.get_mut(&id)) else {
            return;
        };
        let Some(attach) = client.attach.as_mut() else {
            return;
        };
        let Some(fd) = fd else {
            // The terminal is gone: so is the point of the connection.
            client.closing = true;
            return;
        };
        while !attach.to_master.is_empty() {
            // SAFETY: the buffer is valid for reads of its length.
            let rc = unsafe { libc::write(fd, attach.to_master.as_ptr().cast(), attach.to_master.len()) };
            if rc >= 0 {
                attach.to_master.drain(..rc as usize);
                continue;
            }
            match Errno::last() {
                Errno::EINTR => continue,
                Errno::EAGAIN => break,
                // EIO: the child's side is closing; the read side ends it.
                _ => {
                    attach.to_master.clear();
                    break;
                }
            }
        }
    }

    /// A terminal's master can take input again: write the attached
    /// client's keys, and read more of them if that had stopped.
    pub(in crate::supervisor) fn on_terminal_writable(&mut self, token: Token) {
        let (child, _) = pipes::token_pipe(token);
        let Some(id) = self.children.get(&child).and_then(|c| c.attached) else {
            return;
        };
        self.write_input(id);
        let paused = self
            .control
            .as_ref()
            .and_then(|c| c.clients.get(&id))
            .and_then(|c| c.attach.as_ref())
            .is_some_and(|a| a.paused);
        if paused {
            self.read_attached(id);
        } else {
            self.flush_client(id);
        }
    }

    /// Raw terminal output for the attached client: the `n` bytes just
    /// read into the scratch buffer.
    pub(in crate::supervisor) fn send_to_attached(&mut self, id: usize, n: usize) {
        let Some(client) = self.control.as_mut().and_then(|c| c.clients.get_mut(&id)) else {
            return;
        };
        if client.attach.is_none() || client.closing {
            return;
        }
        client.out.extend_from_slice(&self.scratch[..n]);
        if client.out.len() > MAX_PENDING {
            log::warn!("ctl: an attached client did not keep up with the output: detached");
            client.out.clear();
            client.closing = true;
        }
        self.flush_client(id);
    }

    /// The terminal closed (its program exited): the attached client's
    /// connection ends once it has the last output.
    pub(in crate::supervisor) fn end_attach(&mut self, id: usize) {
        let Some(client) = self.control.as_mut().and_then(|c| c.clients.get_mut(&id)) else {
            return;
        };
        if client.attach.is_some() {
            client.closing = true;
            self.flush_client(id);
        }
    }
}
