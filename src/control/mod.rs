//! The control socket of `brood run`: a Unix socket speaking JSON lines,
//! one request and one response per line (README, "brood ctl").
//!
//! Safe by default: created mode 0600, every peer's uid checked with
//! SO_PEERCRED, a stale socket of a dead brood replaced, a live one refused.
//! Clients are bounded: a request line of at most 64 KiB, at most 1 MiB
//! waiting to be written to a client, at most 64 clients at once; a client
//! past a bound is dropped, and none of them can stall the loop.

pub mod ring;
pub mod socket;

use serde_json::Value;

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Most bytes queued for one client before it is dropped.
pub const MAX_PENDING: usize = 1024 * 1024;
/// Most clients connected at once.
pub const MAX_CLIENTS: usize = 64;

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
    Shutdown,
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a str, String> {
    v.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string field '{name}'"))
}

/// Parse one request line: `{"verb": "...", ...}`.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
    let verb = field(&v, "verb")?;
    let target = || field(&v, "target").map(str::to_string);
    Ok(match verb {
        "status" => Request::Status,
        "start" => Request::Start(target()?),
        "stop" => Request::Stop(target()?),
        "restart" => Request::Restart(target()?),
        "signal" => {
            let name = field(&v, "signal")?;
            let signal = crate::signals::parse(name).ok_or_else(|| format!("unknown signal '{name}'"))?;
            Request::Signal {
                signal,
                target: target()?,
            }
        }
        "scale" => {
            let name = field(&v, "name")?.to_string();
            let count = v
                .get("count")
                .and_then(Value::as_u64)
                .filter(|n| *n <= 10_000)
                .ok_or_else(|| "scale needs a count from 0 to 10000".to_string())?;
            Request::Scale {
                name,
                count: count as u32,
            }
        }
        "logs" => Request::Logs {
            target: target()?,
            lines: v.get("lines").and_then(Value::as_u64).unwrap_or(100).min(100_000) as usize,
            follow: v.get("follow").and_then(Value::as_bool).unwrap_or(false),
        },
        "shutdown" => Request::Shutdown,
        other => return Err(format!("unknown verb '{other}'")),
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
    }
}
