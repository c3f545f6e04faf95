//! The console inside the loop: reading stdin without blocking, and acting
//! on each command (SPEC section 7).

use std::time::Instant;

use mio::unix::SourceFd;

use super::{Driver, Supervisor};
use crate::console::{self, Command};
use crate::core::event::ShutdownReason;
use crate::core::ids::ChildId;
use crate::core::instance::Input;
use crate::core::status::{render_table, InstanceStatus};

impl Supervisor {
    pub(super) fn read_console(&mut self) {
        let Some(console) = self.console.as_mut() else {
            return;
        };
        if !console.open {
            return;
        }
        let mut commands = Vec::new();
        let mut buf = [0u8; 4096];
        let mut eof = false;
        console.more = true;
        for _ in 0..16 {
            // SAFETY: `buf` is valid for writes of its length for the call.
            let rc = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if rc < 0 {
                match nix::errno::Errno::last() {
                    nix::errno::Errno::EINTR => continue,
                    nix::errno::Errno::EAGAIN => {
                        console.more = false;
                        break;
                    }
                    e => {
                        log::warn!("cannot read the console: {e}");
                        eof = true;
                        break;
                    }
                }
            }
            if rc == 0 {
                eof = true;
                break;
            }
            console.reader.feed(&buf[..rc as usize], &mut commands);
            if !console.pollable {
                // A regular file never blocks; one read per turn keeps the
                // loop responsive.
                break;
            }
            let mut pfd = libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, zero timeout.
            if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 {
                console.more = false;
                break;
            }
        }
        if eof {
            console.reader.finish(&mut commands);
        }
        for command in commands {
            if self.shutdown.is_some() {
                break;
            }
            self.on_command(command);
        }
        if eof {
            if let Some(c) = self.console.as_mut() {
                if c.open && c.pollable {
                    let _ = self.poll.registry().deregister(&mut SourceFd(&0));
                }
                c.open = false;
            }
            self.begin_shutdown(ShutdownReason::Eof);
        }
    }

    fn on_command(&mut self, command: Command) {
        let run = matches!(self.driver, Driver::Run(_));
        match command {
            Command::Spawn => {
                if let Driver::Spawn(q) = &mut self.driver {
                    // Start it now, so a `q` later in the same read still finds it.
                    q.queued += 1;
                    self.start_queued();
                }
            }
            Command::List => self.list(),
            Command::Help => self.say(console::HELP),
            Command::Quit => self.begin_shutdown(ShutdownReason::Console),
            Command::Kill(target) if run => match self.request(&target, Input::Stop) {
                Ok(labels) if labels.is_empty() => self.say(&format!("'{target}' is not running")),
                Ok(labels) => self.say(&format!("stopping {}", labels.join(", "))),
                Err(e) => self.say(&format!("{e} (l lists them)")),
            },
            Command::Restart(target) if run => match self.request(&target, Input::Restart) {
                Ok(labels) => self.say(&format!("restarting {}", labels.join(", "))),
                Err(e) => self.say(&format!("{e} (l lists them)")),
            },
            Command::Kill(target) => match self.find_live(&target) {
                Some(id) => {
                    let Some(c) = self.children.get(&id) else { return };
                    let (grace, label) = (self.grace_for(c.program), c.label.clone());
                    self.say(&format!("stopping {label}"));
                    self.stop_child(id, grace);
                }
                None => self.say(&format!("no running child '{target}' (l lists them)")),
            },
            Command::Reload if run => match self.reload() {
                Ok(fates) => {
                    let text: Vec<String> = fates
                        .iter()
                        .map(|(name, fate)| format!("{name} {}", fate.word()))
                        .collect();
                    self.say(&format!("reloaded: {}", text.join(", ")));
                }
                Err(e) => self.say(&format!("reload refused: {e}")),
            },
            Command::Reload => self.say("R reloads the config in run mode"),
            Command::Restart(_) => self.say("r restarts programs in run mode; here, press Enter to spawn"),
            Command::Unknown(text) => self.say(&format!("unknown command '{text}' (h for help)")),
        }
    }

    /// Spawn mode: a live child by label or pid.
    fn find_live(&self, target: &str) -> Option<ChildId> {
        let pid: Option<i32> = target.parse().ok();
        self.children
            .values()
            .filter(|c| c.state.leader_alive())
            .find(|c| c.label == target || Some(c.pid) == pid)
            .map(|c| c.id)
    }

    /// `l`: every instance (run mode) or every live child (spawn mode).
    fn list(&mut self) {
        let now = Instant::now();
        match &self.driver {
            Driver::Run(core) => {
                let text = render_table(&core.snapshot(now));
                self.say(&text);
            }
            Driver::Spawn(_) => {
                let mut live: Vec<&crate::children::Child> = self
                    .children
                    .values()
                    .filter(|c| c.state.leader_alive())
                    .map(|c| &**c)
                    .collect();
                live.sort_by_key(|c| c.id);
                let rows: Vec<InstanceStatus> = live
                    .iter()
                    .map(|c| InstanceStatus {
                        label: c.label.clone(),
                        name: self
                            .programs
                            .get(&c.program)
                            .map(|p| p.name.clone())
                            .unwrap_or_default(),
                        pid: Some(c.pid),
                        state: c.state.name().to_string(),
                        uptime_ms: Some(c.uptime(now).as_millis() as u64),
                        restarts: 0,
                        last_exit: None,
                        ready: None,
                        health: None,
                        notify_status: None,
                        reason: None,
                    })
                    .collect();
                let s = self.stats;
                let text = format!(
                    "{}{} running; {} spawned, {} succeeded, {} failed, {} spawn_failed, {} stopped\n",
                    render_table(&rows),
                    rows.len(),
                    s.spawned,
                    s.succeeded,
                    s.failed,
                    s.spawn_failed,
                    s.stopped
                );
                self.say(&text);
            }
        }
    }
}
