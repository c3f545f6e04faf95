//! The control socket of `brood run`: a Unix socket speaking JSON lines,
//! one request and one response per line (README, "brood ctl").
//!
//! Safe by default: created mode 0600, every peer's uid checked with
//! SO_PEERCRED, a stale socket of a dead brood replaced, a live one refused.
//! Clients are bounded: a request line of at most 64 KiB; the next request
//! read only once less than 1 MiB waits to be written to the client (an
//! answer itself is written whole, however long); a `logs -f` backlog of
//! at most 1 MiB; 1,024 clients at once (the next wait in the listen
//! backlog); 10 s without a request closes a client that is not following.
//! None of them can stall the loop.

pub mod ring;
pub mod socket;

use serde::{Deserialize, Serialize};

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Above this many bytes waiting to be written to a client, brood reads no
/// further request from it and sends a follower no further line.
pub const MAX_PENDING: usize = 1024 * 1024;
/// Most clients connected at once; the next wait in the listen backlog.
pub const MAX_CLIENTS: usize = 1024;
/// Most instances `scale` may ask for (the config's `numprocs` bound).
pub const MAX_SCALE: u32 = 10_000;
/// `logs` without `lines`, and the most it may ask for.
pub const DEFAULT_LOG_LINES: u64 = 100;
pub const MAX_LOG_LINES: u64 = 100_000;

/// A request as it travels: `{"verb": "...", ...}` (README, "The
/// protocol"). `brood ctl` serializes it, the server deserializes it and
/// validates it into a [`Request`]. A key given twice is an error, never
/// "the last one wins": `{"verb":"status","verb":"shutdown"}` must not shut
/// brood down. Keys a verb does not know are ignored, so that newer clients
/// can add optional ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "lowercase")]
pub enum WireRequest {
    Status,
    Start {
        target: String,
    },
    Stop {
        target: String,
    },
    Restart {
        target: String,
    },
    Signal {
        signal: String,
        target: String,
    },
    Scale {
        name: String,
        count: i64,
    },
    Logs {
        target: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lines: Option<u64>,
        #[serde(default)]
        follow: bool,
    },
    /// Recent events from `since` on (all kept, without it), then live
    /// ones with `follow`.
    Events {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        #[serde(default)]
        follow: bool,
    },
    /// Re-read the config file.
    Reload,
    Shutdown,
    Reopen,
    /// Connect to an instance's terminal: after the reply line the
    /// connection carries bytes (see [`ATTACH_INPUT`]).
    Attach {
        target: String,
    },
}

/// The verbs [`WireRequest`] knows, for the "unknown verb" message.
const VERBS: [&str; 12] = [
    "status", "start", "stop", "restart", "signal", "scale", "logs", "events", "reload", "reopen",
    "shutdown", "attach",
];

/// After a successful `attach` reply, brood sends the terminal's output as
/// raw bytes, and the client sends frames: a kind byte, a big-endian u16
/// length, then that many bytes. This kind carries keys for the terminal.
pub const ATTACH_INPUT: u8 = 0;
/// A frame of this kind carries the client's window size: rows and
/// columns, each a big-endian u16.
pub const ATTACH_WINDOW: u8 = 1;

/// One client-to-server frame of an attached connection.
pub fn attach_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len().min(u16::MAX as usize);
    let mut frame = Vec::with_capacity(3 + len);
    frame.push(kind);
    frame.extend_from_slice(&(len as u16).to_be_bytes());
    frame.extend_from_slice(&payload[..len]);
    frame
}

/// Split the complete frames off the front of `buf`: `(kind, payload)`
/// each; a partial frame stays in `buf`.
pub fn take_frames(buf: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut at = 0;
    while let [kind, hi, lo, ..] = buf[at..] {
        let len = u16::from_be_bytes([hi, lo]) as usize;
        let Some(payload) = buf.get(at + 3..at + 3 + len) else {
            break;
        };
        frames.push((kind, payload.to_vec()));
        at += 3 + len;
    }
    buf.drain(..at);
    frames
}

/// A validated request: what the run loop acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    Start(String),
    Stop(String),
    Restart(String),
    Signal {
        signal: i32,
        target: String,
    },
    Scale {
        name: String,
        count: u32,
    },
    Logs {
        target: String,
        lines: usize,
        follow: bool,
    },
    Events {
        since: u64,
        follow: bool,
    },
    Reload,
    Shutdown,
    /// Close and reopen every log file (logrotate's `create` mode).
    Reopen,
    /// Connect to this label's terminal.
    Attach(String),
}

/// Only the verb, to name an unknown one in its own words.
#[derive(Deserialize)]
struct Head {
    verb: String,
}

/// serde_json's message without its "at line 1 column N" (a request is one
/// line).
fn malformed(e: serde_json::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => &text,
    };
    format!("malformed request: {text}")
}

/// The count `scale` asks for, checked against the bound both the client
/// and the server apply.
pub fn scale_count(count: i64) -> Result<u32, String> {
    u32::try_from(count)
        .ok()
        .filter(|c| *c <= MAX_SCALE)
        .ok_or_else(|| format!("scale needs a count from 0 to {MAX_SCALE}, not {count}"))
}

/// Parse and validate one request line.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let head: Head = serde_json::from_slice(line).map_err(malformed)?;
    if !VERBS.contains(&head.verb.as_str()) {
        return Err(format!("unknown verb '{}'", head.verb.escape_debug()));
    }
    let wire: WireRequest = serde_json::from_slice(line).map_err(malformed)?;
    Ok(match wire {
        WireRequest::Status => Request::Status,
        WireRequest::Start { target } => Request::Start(target),
        WireRequest::Stop { target } => Request::Stop(target),
        WireRequest::Restart { target } => Request::Restart(target),
        WireRequest::Signal { signal, target } => Request::Signal {
            signal: crate::signals::parse(&signal)
                .ok_or_else(|| format!("unknown signal '{}'", signal.escape_debug()))?,
            target,
        },
        WireRequest::Scale { name, count } => Request::Scale {
            name,
            count: scale_count(count)?,
        },
        WireRequest::Logs {
            target,
            lines,
            follow,
        } => Request::Logs {
            target,
            lines: lines.unwrap_or(DEFAULT_LOG_LINES).min(MAX_LOG_LINES) as usize,
            follow,
        },
        WireRequest::Events { since, follow } => Request::Events {
            since: since.unwrap_or(0),
            follow,
        },
        WireRequest::Reload => Request::Reload,
        WireRequest::Shutdown => Request::Shutdown,
        WireRequest::Reopen => Request::Reopen,
        WireRequest::Attach { target } => Request::Attach(target),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_verb() {
        assert_eq!(parse_request(br#"{"verb":"status"}"#), Ok(Request::Status));
        assert_eq!(
            parse_request(br#"{"verb":"stop","target":"web.1"}"#),
            Ok(Request::Stop("web.1".into()))
        );
        assert_eq!(
            parse_request(br#"{"verb":"signal","signal":"HUP","target":"web"}"#),
            Ok(Request::Signal {
                signal: libc::SIGHUP,
                target: "web".into()
            })
        );
        assert_eq!(
            parse_request(br#"{"verb":"scale","name":"web","count":3}"#),
            Ok(Request::Scale {
                name: "web".into(),
                count: 3
            })
        );
        assert_eq!(
            parse_request(br#"{"verb":"logs","target":"web","lines":5,"follow":true}"#),
            Ok(Request::Logs {
                target: "web".into(),
                lines: 5,
                follow: true
            })
        );
        assert_eq!(parse_request(br#"{"verb":"shutdown"}"#), Ok(Request::Shutdown));
        assert_eq!(
            parse_request(br#"{"verb":"events","since":7,"follow":true}"#),
            Ok(Request::Events {
                since: 7,
                follow: true
            })
        );
        assert_eq!(parse_request(br#"{"verb":"reopen"}"#), Ok(Request::Reopen));
        assert_eq!(
            parse_request(br#"{"verb":"attach","target":"web.1"}"#),
            Ok(Request::Attach("web.1".into()))
        );
    }

    #[test]
    fn attach_frames_round_trip_and_wait_for_their_whole_payload() {
        let mut stream = attach_frame(ATTACH_INPUT, b"ls\r");
        stream.extend(attach_frame(ATTACH_WINDOW, &[0, 40, 0, 120]));
        stream.extend(attach_frame(ATTACH_INPUT, b""));
        let whole = stream.len();
        stream.extend(&attach_frame(ATTACH_INPUT, b"abc")[..4]);
        let frames = take_frames(&mut stream);
        assert_eq!(
            frames,
            [
                (ATTACH_INPUT, b"ls\r".to_vec()),
                (ATTACH_WINDOW, vec![0, 40, 0, 120]),
                (ATTACH_INPUT, vec![]),
            ]
        );
        assert_eq!(stream.len(), 4, "the partial frame waits ({whole} bytes taken)");
        stream.extend(b"bc");
        assert_eq!(take_frames(&mut stream), [(ATTACH_INPUT, b"abc".to_vec())]);
        assert!(stream.is_empty());
    }

    #[test]
    fn bad_requests_are_errors() {
        assert!(parse_request(b"not json").is_err());
        assert!(parse_request(br#"{"verb":"fly"}"#)
            .unwrap_err()
            .contains("unknown verb"));
        assert!(parse_request(br#"{"verb":"stop"}"#)
            .unwrap_err()
            .contains("target"));
        assert!(parse_request(br#"{"verb":"signal","signal":"NOPE","target":"x"}"#).is_err());
        assert!(parse_request(br#"{"verb":"scale","name":"w","count":-1}"#).is_err());
        assert!(parse_request(br#"[1,2]"#).is_err());
        assert!(parse_request(br#"{"verb":"scale","name":"w","count":10001}"#).is_err());
    }

    #[test]
    fn a_key_given_twice_is_an_error_not_the_last_one() {
        for line in [
            &br#"{"verb":"status","verb":"shutdown"}"#[..],
            br#"{"verb":"stop","target":"a","target":"b"}"#,
            br#"{"verb":"logs","target":"a","follow":false,"follow":true}"#,
            br#"{"verb":"scale","name":"w","count":1,"count":0}"#,
        ] {
            let e = parse_request(line).unwrap_err();
            assert!(
                e.contains("duplicate field"),
                "{}: {e}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn wire_form_is_the_documented_one() {
        let text = |r: &WireRequest| serde_json::to_string(r).unwrap();
        assert_eq!(text(&WireRequest::Status), r#"{"verb":"status"}"#);
        assert_eq!(
            text(&WireRequest::Signal {
                signal: "HUP".into(),
                target: "web.1".into()
            }),
            r#"{"verb":"signal","signal":"HUP","target":"web.1"}"#
        );
        assert_eq!(
            text(&WireRequest::Logs {
                target: "web".into(),
                lines: Some(5),
                follow: true
            }),
            r#"{"verb":"logs","target":"web","lines":5,"follow":true}"#
        );
        assert_eq!(
            parse_request(br#"{"verb":"logs","target":"web"}"#),
            Ok(Request::Logs {
                target: "web".into(),
                lines: 100,
                follow: false
            })
        );
        // Unknown keys are ignored.
        assert_eq!(parse_request(br#"{"verb":"status","x":1}"#), Ok(Request::Status));
    }
}
