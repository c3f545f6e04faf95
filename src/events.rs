//! The `--events` JSON-lines writer: one object per line, written with a
//! single `write` as it happens, so a reader tailing the file never sees half
//! an event.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::core::event::Event;
use crate::error::Error;

pub struct Events {
    file: Option<File>,
    failed: bool,
}

impl Events {
    pub fn none() -> Events {
        Events {
            file: None,
            failed: false,
        }
    }

    /// The writer for `--events PATH`, or none without the flag.
    pub fn for_flag(path: Option<&Path>) -> Result<Events, Error> {
        match path {
            Some(p) => Events::open(p),
            None => Ok(Events::none()),
        }
    }

    /// Open (append, create 0600, never through a symlink).
    pub fn open(path: &Path) -> Result<Events, Error> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    Error::usage(format!(
                        "events file '{}' is a symlink; brood does not follow it",
                        path.display()
                    ))
                } else {
                    Error::usage(format!("cannot open events file '{}': {e}", path.display()))
                }
            })?;
        Ok(Events {
            file: Some(file),
            failed: false,
        })
    }

    /// Write `{"ts": ..., "event": kind, ...fields}`.
    pub fn emit(&mut self, event: &Event) {
        self.emit_at(SystemTime::now(), event);
    }

    /// Emit with the time the thing happened (an exit: when it was reaped,
    /// not when the loop got round to writing it).
    pub fn emit_at(&mut self, at: SystemTime, event: &Event) {
        let Some(file) = self.file.as_mut() else { return };
        let ts = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let line = match serde_json::to_string(event) {
            // `{"event":...}` becomes `{"ts":...,"event":...}`.
            Ok(body) => format!("{{\"ts\":{ts},{}\n", &body[1..]),
            Err(e) => {
                log::error!("cannot encode an event: {e}");
                return;
            }
        };
        if let Err(e) = file.write_all(line.as_bytes()) {
            if !self.failed {
                log::error!("cannot write events file: {e}");
                self.failed = true;
            }
        }
    }
}
