//! `brood ctl`: a client for a running `brood run`, over its socket.
//! A plain blocking client: one request line, then the answer lines, every
//! wait bounded by `--timeout` (a stopped brood still accepts connections
//! into its backlog, and would otherwise keep us waiting forever).
//! `attach` then carries a terminal session (`attach`).

mod attach;

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::{CtlArgs, CtlVerb};
use crate::config;
use crate::control::{self, WireRequest};
use crate::core::status::{render_table, InstanceStatus};
use crate::error::Error;

/// The sockets to try, in order: `--socket PATH` alone, else `.brood.sock`
/// beside the config and the runtime-directory fallbacks `brood run` uses
/// when that one cannot be made.
fn socket_paths(args: &CtlArgs) -> Vec<PathBuf> {
    if let Some(p) = &args.socket {
        return vec![p.clone()];
    }
    let config = match &args.file {
        Some(f) => f.clone(),
        None => config::find_config(None).unwrap_or_else(|_| PathBuf::from("brood.toml")),
    };
    control::socket::default_paths(&config)
}

fn request(verb: &CtlVerb) -> Result<WireRequest, Error> {
    Ok(match verb {
        CtlVerb::Status { .. } => WireRequest::Status,
        CtlVerb::Start { target } => WireRequest::Start {
            target: target.clone(),
        },
        CtlVerb::Stop { target } => WireRequest::Stop {
            target: target.clone(),
        },
        CtlVerb::Restart { target } => WireRequest::Restart {
            target: target.clone(),
        },
        CtlVerb::Signal { signal, target } => {
            if crate::signals::parse(signal).is_none() {
                return Err(Error::usage(format!("unknown signal '{signal}'")));
            }
            WireRequest::Signal {
                signal: signal.clone(),
                target: target.clone(),
            }
        }
        CtlVerb::Scale { spec } => {
            // The server's bounds, checked here too: every bad count is a
            // usage error (exit 2), whichever side of the range it is on.
            let (name, count) = spec
                .split_once('=')
                .filter(|(n, _)| !n.is_empty())
                .and_then(|(n, c)| Some((n, c.trim().parse::<i64>().ok()?)))
                .filter(|(_, c)| control::scale_count(*c).is_ok())
                .ok_or_else(|| {
                    Error::usage(format!(
                        "scale takes NAME=N with N from 0 to {}, not '{spec}'",
                        control::MAX_SCALE
                    ))
                })?;
            WireRequest::Scale {
                name: name.to_string(),
                count,
            }
        }
        CtlVerb::Logs {
            lines,
            follow,
            target,
        } => WireRequest::Logs {
            target: target.clone(),
            lines: Some(*lines as u64),
            follow: *follow,
        },
        CtlVerb::Events { follow, since } => WireRequest::Events {
            since: *since,
            follow: *follow,
        },
        CtlVerb::Reload => WireRequest::Reload,
        CtlVerb::Shutdown => WireRequest::Shutdown,
        CtlVerb::Reopen => WireRequest::Reopen,
        CtlVerb::Attach { target } => WireRequest::Attach {
            target: target.clone(),
        },
    })
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn timed_out(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Connect with the wait bounded: Linux bounds a Unix `connect` to a full
/// backlog by SO_SNDTIMEO (then EAGAIN).
fn connect_within(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let tv = nix::sys::time::TimeVal::new(
        timeout.as_secs().try_into().unwrap_or(i64::MAX),
        timeout.subsec_micros().into(),
    );
    socket::setsockopt(&fd, sockopt::SendTimeout, &tv)?;
    let addr = UnixAddr::new(path)?;
    socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

/// The first socket that answers; a refusal (EACCES: another user's 0600
/// socket) or a brood that does not accept in time ends the search.
fn connect(paths: &[PathBuf], timeout: Duration) -> Result<(UnixStream, PathBuf), Error> {
    let mut first_error = None;
    for path in paths {
        match connect_within(path, timeout) {
            Ok(stream) => return Ok((stream, path.clone())),
            Err(e) if matches!(errno_of(&e), libc::EACCES | libc::EPERM) => {
                let me = nix::unistd::geteuid().as_raw();
                let owner = match std::fs::symlink_metadata(path) {
                    Ok(m) => format!("owned by uid {}", m.uid()),
                    Err(_) => "in a directory you cannot search".to_string(),
                };
                return Err(Error::runtime(format!(
                    "refused: permission denied on the socket {} ({owner}; you are uid {me})",
                    path.display()
                )));
            }
            Err(e) if timed_out(&e) => {
                return Err(Error::no_server(format!(
                    "brood at {} did not accept the connection within {} (is it stopped?)",
                    path.display(),
                    shown(timeout)
                )))
            }
            Err(e) => {
                first_error.get_or_insert((path.clone(), e));
            }
        }
    }
    Err(match first_error {
        Some((path, e)) => Error::no_server(format!("no brood answering at {}: {e}", path.display())),
        None => Error::no_server("no socket to try".to_string()),
    })
}

fn shown(d: Duration) -> String {
    crate::core::status::human_duration(d)
}

/// Reads one answer line; None at end of stream.
fn read_answer(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = String::new();
    loop {
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(line)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

pub fn run(args: CtlArgs) -> Result<i32, Error> {
    if args.timeout.is_zero() {
        return Err(Error::usage("--timeout must be more than 0".to_string()));
    }
    let req = request(&args.verb)?;
    let text =
        serde_json::to_string(&req).map_err(|e| Error::runtime(format!("cannot encode the request: {e}")))?;
    let (stream, path) = connect(&socket_paths(&args), args.timeout)?;
    let _ = stream.set_read_timeout(Some(args.timeout));
    let _ = stream.set_write_timeout(Some(args.timeout));
    // A brood that refuses us answers and hangs up before reading the
    // request: a failed write is "no brood" only if no answer is waiting.
    let write_error = (&stream).write_all(format!("{text}\n").as_bytes()).err();
    let mut reader = BufReader::new(&stream);
    let first = match (read_answer(&mut reader), write_error) {
        (Ok(Some(l)), _) => l,
        (Err(e), _) if timed_out(&e) => {
            return Err(Error::no_server(format!(
                "brood at {} did not answer within {} (is it stopped?)",
                path.display(),
                shown(args.timeout)
            )))
        }
        (_, Some(e)) => {
            return Err(Error::no_server(format!(
                "no brood answering at {}: {e}",
                path.display()
            )))
        }
        (Ok(None), None) => {
            // brood read the request and hung up: it is shutting down.
            return Err(Error::runtime(format!(
                "brood at {} closed the connection without answering (is it shutting down?)",
                path.display()
            )));
        }
        (Err(e), None) => {
            return Err(Error::no_server(format!(
                "no brood answering at {}: {e}",
                path.display()
            )))
        }
    };
    let reply: Value = serde_json::from_str(&first)
        .map_err(|e| Error::runtime(format!("malformed answer from brood: {e}")))?;
    if reply["ok"] != Value::Bool(true) {
        let why = reply["error"].as_str().unwrap_or("refused");
        eprintln!("brood ctl: {why}");
        return Ok(1);
    }
    if let CtlVerb::Attach { target } = &args.verb {
        // The session waits as long as the user likes.
        let _ = stream.set_read_timeout(None);
        let _ = stream.set_write_timeout(None);
        let early = reader.buffer().to_vec();
        drop(reader);
        return attach::run(&stream, &early, target, &reply["pid"]);
    }
    let mut out = Out::default();
    match &args.verb {
        CtlVerb::Status { json: true } => out.line(&json!({"programs": reply["programs"]}).to_string()),
        CtlVerb::Status { json: false } => print_status(&mut out, &reply["programs"]),
        CtlVerb::Logs { follow, .. } => {
            for l in reply["lines"].as_array().into_iter().flatten() {
                print_line(&mut out, l);
            }
            if *follow {
                // Following waits as long as brood lives.
                let _ = stream.set_read_timeout(None);
                while !out.closed {
                    match read_answer(&mut reader) {
                        Ok(Some(line)) => match serde_json::from_str::<Value>(&line) {
                            // brood's last word: why it ends the stream
                            // (this client fell behind).
                            Ok(v) if v["ok"] == Value::Bool(false) => {
                                let why = v["error"].as_str().unwrap_or("brood ended the stream");
                                eprintln!("brood ctl: {why}");
                                return Ok(1);
                            }
                            Ok(v) => print_line(&mut out, &v),
                            Err(_) => {}
                        },
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        CtlVerb::Events { follow, .. } => {
            for e in reply["events"].as_array().into_iter().flatten() {
                out.line(&e.to_string());
            }
            if *follow {
                let _ = stream.set_read_timeout(None);
                while !out.closed {
                    match read_answer(&mut reader) {
                        Ok(Some(line)) => {
                            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                            if v["ok"] == Value::Bool(false) {
                                // Dropped by brood: it says why.
                                let why = v["error"].as_str().unwrap_or("dropped");
                                eprintln!("brood ctl: {why}");
                                return Ok(1);
                            }
                            if !v.is_null() {
                                out.line(&v.to_string());
                            }
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        CtlVerb::Scale { .. } => out.line(&format!(
            "scaled {} to {}",
            reply["name"].as_str().unwrap_or(""),
            reply["count"]
        )),
        CtlVerb::Shutdown => out.line("shutting down"),
        CtlVerb::Reload => {
            for (name, fate) in reply["programs"].as_object().into_iter().flatten() {
                out.line(&format!("{name} {}", fate.as_str().unwrap_or("?")));
            }
        }
        CtlVerb::Reopen => out.line(&format!("reopened {} log files", reply["files"])),
        _ => {
            let labels: Vec<&str> = reply["affected"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if labels.is_empty() {
                out.line("nothing to do");
            } else {
                out.line(&labels.join(" "));
            }
        }
    }
    Ok(0)
}

/// stdout, where a reader that went away (`| head`) ends the output
/// quietly instead of panicking in `println!`.
#[derive(Default)]
struct Out {
    closed: bool,
}

impl Out {
    fn line(&mut self, text: &str) {
        self.text(&format!("{text}\n"));
    }

    fn text(&mut self, text: &str) {
        if !self.closed && io::stdout().lock().write_all(text.as_bytes()).is_err() {
            self.closed = true;
        }
    }
}

fn print_line(out: &mut Out, v: &Value) {
    let label = v["label"].as_str().unwrap_or("?");
    let text = v["line"].as_str().unwrap_or("");
    if v["stream"] == "stderr" {
        let _ = writeln!(io::stderr().lock(), "{label} | {text}");
    } else {
        out.line(&format!("{label} | {text}"));
    }
}

fn print_status(out: &mut Out, programs: &Value) {
    match serde_json::from_value::<Vec<InstanceStatus>>(programs.clone()) {
        Ok(rows) => out.text(&render_table(&rows)),
        Err(e) => eprintln!("brood: error: malformed status reply: {e}"),
    }
}
