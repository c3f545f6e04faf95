//! `tcp` and `http` probes: one non-blocking attempt each, driven by the
//! loop's readiness events.
//!
//! A [`Check`] owns one `mio` TCP stream. It starts a non-blocking connect,
//! then advances only when the loop hands it an event for its token: the
//! connect completes (tcp: pass), the request goes out, the status line
//! comes back (http: 2xx or 3xx passes). It never blocks, never sleeps and
//! keeps no clock: the loop owns the deadline and drops the check when it
//! passes (see the module doc of `probe`).
//!
//! Addresses are IP literals or `localhost` (127.0.0.1), checked when the
//! config is loaded: a name lookup can block for seconds, and config is
//! also loaded inside the running loop (reload), so brood resolves no
//! names at all.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

/// The most bytes a check reads: the status line must fit.
pub const MAX_STATUS_LINE: usize = 4096;

/// The end of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// Why, in a few words (`connection refused`, `HTTP 500 Internal
    /// Server Error`): for events and `ctl status`.
    Fail(String),
}

/// An `http = "URL"` probe: where to connect and what to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpTarget {
    pub addr: SocketAddr,
    /// The `Host:` header: the URL's host and port as written.
    pub host: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl std::fmt::Display for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.host, self.path)
    }
}

/// What one [`Check`] probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Tcp(SocketAddr),
    Http(HttpTarget),
}

impl Target {
    fn addr(&self) -> SocketAddr {
        match self {
            Target::Tcp(a) => *a,
            Target::Http(h) => h.addr,
        }
    }
}

/// `HOST:PORT` with HOST an IPv4 literal, `[IPv6]` or `localhost`.
pub fn parse_host_port(text: &str) -> Result<SocketAddr, String> {
    let (host, port) = split_host_port(text)?;
    let port = match port {
        Some(p) => p,
        None => return Err(format!("'{}' needs a port (HOST:PORT)", shown(text))),
    };
    Ok(SocketAddr::new(host_ip(host)?, port))
}

/// `http://HOST[:PORT][/PATH]`: HOST as in [`parse_host_port`], PORT 80 by
/// default, PATH `/` by default. A fragment is dropped (it never goes to a
/// server); anything that could split the request line is refused.
pub fn parse_http_url(text: &str) -> Result<HttpTarget, String> {
    let scheme_end = text.find("://").unwrap_or(0);
    let scheme = &text[..scheme_end];
    if !scheme.eq_ignore_ascii_case("http") {
        if scheme.eq_ignore_ascii_case("https") {
            return Err("https is not supported (http:// only)".to_string());
        }
        return Err(format!("'{}' is not an http:// URL", shown(text)));
    }
    let rest = &text[scheme_end + 3..];
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(auth_end);
    if authority.contains('@') {
        return Err("a user name or password in the URL is not supported".to_string());
    }
    let (host, port) = split_host_port(authority)?;
    let addr = SocketAddr::new(host_ip(host)?, port.unwrap_or(80));
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    if let Some(c) = path.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "the path has {:?}: write it percent-encoded (%20 for a space)",
            c
        ));
    }
    Ok(HttpTarget {
        addr,
        host: authority.to_string(),
        path,
    })
}

/// HOST and the port, if there is one; `[v6]` keeps its brackets off.
fn split_host_port(text: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("'{}': unclosed '[' in the address", shown(text)));
        };
        match after {
            "" => (host, None),
            a => match a.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => return Err(format!("'{}': expected ':PORT' after ']'", shown(text))),
            },
        }
    } else {
        match text.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(format!(
                    "'{}': write an IPv6 address in brackets, as [::1]:PORT",
                    shown(text)
                ))
            }
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(format!("'{}' has no host", shown(text)));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(format!("'{}': the port must be 1 to 65535", shown(text))),
        },
    };
    Ok((host, port))
}

fn host_ip(host: &str) -> Result<IpAddr, String> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    host.parse::<IpAddr>().map_err(|_| {
        format!(
            "'{}' is not an IP address: brood does not look up host names (a lookup can block); \
             use an address such as 127.0.0.1 or [::1], or localhost",
            shown(host)
        )
    })
}

fn shown(text: &str) -> String {
    const MAX: usize = 60;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// Where an attempt is; each stage moves only forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Connecting,
    Sending,
    Reading,
    Done,
}

/// One tcp or http attempt, registered with the loop's poll under one
/// token. Dropping it closes the socket, which also takes it out of the
/// poll (the fd is never duplicated); [`Check::cancel`] deregisters first.
#[derive(Debug)]
pub struct Check {
    stream: TcpStream,
    stage: Stage,
    /// The request (http), and how much of it is sent.
    request: Vec<u8>,
    sent: usize,
    /// The answer so far, at most [`MAX_STATUS_LINE`] bytes.
    answer: Vec<u8>,
    addr: SocketAddr,
}

impl Check {
    /// Start connecting to `target` and register the socket under `token`
    /// for both directions. `Err` is an attempt that failed at once (no
    /// socket left, an unreachable network): count it as a failure.
    pub fn start(target: &Target, registry: &Registry, token: Token) -> Result<Check, String> {
        let addr = target.addr();
        let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect to {addr}: {}", short(&e)))?;
        registry
            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| format!("cannot poll a socket: {}", short(&e)))?;
        let request = match target {
            Target::Tcp(_) => Vec::new(),
            Target::Http(h) => format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: brood\r\nAccept: */*\r\nConnection: close\r\n\r\n",
                h.path, h.host
            )
            .into_bytes(),
        };
        Ok(Check {
            stream,
            stage: Stage::Connecting,
            request,
            sent: 0,
            answer: Vec::new(),
            addr,
        })
    }

    /// Advance on an event for this check's token (any event: a spurious
    /// one is harmless). `Some` is the end of the attempt; `None`, wait
    /// for the next event or the deadline. Reads and writes until the
    /// socket would block, as edge-triggered polling requires.
    pub fn on_event(&mut self) -> Option<Outcome> {
        let outcome = self.advance();
        if outcome.is_some() {
            self.stage = Stage::Done;
        }
        outcome
    }

    fn advance(&mut self) -> Option<Outcome> {
        if self.stage == Stage::Done {
            return None;
        }
        if self.stage == Stage::Connecting {
            // The pattern mio documents for a non-blocking connect: an
            // error is the connect's failure; no peer yet, still pending.
            match self.stream.take_error() {
                Ok(Some(e)) | Err(e) => return Some(self.fail_io("connect to", &e)),
                Ok(None) => {}
            }
            match self.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return None,
                Err(e) => return Some(self.fail_io("connect to", &e)),
            }
            if self.request.is_empty() {
                return Some(Outcome::Pass);
            }
            self.stage = Stage::Sending;
        }
        if self.stage == Stage::Sending {
            while self.sent < self.request.len() {
                match self.stream.write(&self.request[self.sent..]) {
                    Ok(0) => return Some(Outcome::Fail("the server closed the connection".into())),
                    Ok(n) => self.sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Some(self.fail_io("send to", &e)),
                }
            }
            self.stage = Stage::Reading;
        }
        // Reading: until a whole status line is in, the server closes, or
        // the socket would block.
        loop {
            if let Some(end) = self.answer.iter().position(|&b| b == b'\n') {
                return Some(status_outcome(&self.answer[..end]));
            }
            if self.answer.len() >= MAX_STATUS_LINE {
                return Some(Outcome::Fail(format!(
                    "no status line in the first {MAX_STATUS_LINE} bytes"
                )));
            }
            let mut buf = [0u8; 1024];
            let room = (MAX_STATUS_LINE - self.answer.len()).min(buf.len());
            match self.stream.read(&mut buf[..room]) {
                Ok(0) if self.answer.is_empty() => {
                    return Some(Outcome::Fail(
                        "the server closed the connection without answering".into(),
                    ))
                }
                Ok(0) => return Some(status_outcome(&self.answer)),
                Ok(n) => self.answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(self.fail_io("read from", &e)),
            }
        }
    }

    /// Where a pending attempt is stuck, for the loop's timeout message
    /// (`no answer within 1s (connecting)`).
    pub fn stage(&self) -> &'static str {
        match self.stage {
            Stage::Connecting => "connecting",
            Stage::Sending => "sending the request",
            Stage::Reading => "waiting for the status line",
            Stage::Done => "done",
        }
    }

    /// Deregister and close: the attempt ended, the loop's deadline
    /// passed, or the instance is gone.
    pub fn cancel(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
    }
}

impl Drop for Check {
    /// Close with a reset (SO_LINGER 0), not a FIN: a check's connection
    /// would otherwise sit in TIME_WAIT for a minute on brood's side, and
    /// 100 programs checked every 100 ms would hold 60,000 of them, enough
    /// to run out of ephemeral ports. The peer has nothing more to say.
    fn drop(&mut self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let _ = nix::sys::socket::setsockopt(&self.stream, nix::sys::socket::sockopt::Linger, &linger);
    }
}

impl Check {
    fn fail_io(&self, what: &str, e: &io::Error) -> Outcome {
        Outcome::Fail(format!("{what} {}: {}", self.addr, short(e)))
    }
}

/// An io error without the `(os error N)` tail, lower case: `connection
/// refused`.
fn short(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// 2xx and 3xx pass; anything else, or no status line, fails.
pub fn status_outcome(line: &[u8]) -> Outcome {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    let reason = parts.next().unwrap_or_default();
    let is_http = version.starts_with(b"HTTP/1.");
    let code_num = match code {
        [a, b, c] if code.iter().all(u8::is_ascii_digit) => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => 0,
    };
    if !is_http || code_num < 100 {
        let start: String = String::from_utf8_lossy(&line[..line.len().min(40)])
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        return Outcome::Fail(format!("not an HTTP status line: '{start}'"));
    }
    if (200..400).contains(&code_num) {
        return Outcome::Pass;
    }
    let reason: String = String::from_utf8_lossy(&reason[..reason.len().min(60)])
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let reason = reason.trim();
    if reason.is_empty() {
        Outcome::Fail(format!("HTTP {code_num}"))
    } else {
        Outcome::Fail(format!("HTTP {code_num} {reason}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_takes_ip_literals_and_localhost() {
        assert_eq!(
            parse_host_port("127.0.0.1:5432"),
            Ok("127.0.0.1:5432".parse().unwrap())
        );
        assert_eq!(parse_host_port("[::1]:80"), Ok("[::1]:80".parse().unwrap()));
        assert_eq!(
            parse_host_port("localhost:8000"),
            Ok("127.0.0.1:8000".parse().unwrap())
        );
        assert_eq!(
            parse_host_port("LocalHost:8000"),
            Ok("127.0.0.1:8000".parse().unwrap())
        );
    }

    #[test]
    fn host_port_refuses_names_and_bad_ports() {
        let cases = [
            (
                "db.internal:5432",
                "is not an IP address: brood does not look up host names",
            ),
            ("127.0.0.1", "needs a port"),
            ("127.0.0.1:0", "the port must be 1 to 65535"),
            ("127.0.0.1:65536", "the port must be 1 to 65535"),
            ("127.0.0.1:+80", "the port must be 1 to 65535"),
            ("::1:80", "in brackets"),
            ("[::1:80", "unclosed '['"),
            ("[::1]80", "expected ':PORT'"),
            (":80", "has no host"),
        ];
        for (text, want) in cases {
            let e = parse_host_port(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn http_urls_default_port_and_path() {
        let t = parse_http_url("http://127.0.0.1:8000/health?full=1#top").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(t.host, "127.0.0.1:8000");
        assert_eq!(t.path, "/health?full=1");
        let t = parse_http_url("HTTP://localhost").unwrap();
        assert_eq!(t.addr, "127.0.0.1:80".parse().unwrap());
        assert_eq!((t.host.as_str(), t.path.as_str()), ("localhost", "/"));
        let t = parse_http_url("http://[::1]:9?x").unwrap();
        assert_eq!(t.addr, "[::1]:9".parse().unwrap());
        assert_eq!(t.path, "/?x");
        assert_eq!(t.to_string(), "http://[::1]:9/?x");
    }

    #[test]
    fn http_urls_refuse_what_brood_cannot_send() {
        let cases = [
            ("https://127.0.0.1/", "https is not supported"),
            ("ftp://127.0.0.1/", "not an http:// URL"),
            ("127.0.0.1:80/health", "not an http:// URL"),
            ("http://example.com/", "is not an IP address"),
            ("http://u:p@127.0.0.1/", "user name or password"),
            ("http://127.0.0.1/a b", "percent-encoded"),
            ("http://127.0.0.1/a\r\nX: y", "percent-encoded"),
            ("http:///x", "has no host"),
        ];
        for (text, want) in cases {
            let e = parse_http_url(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn status_lines_pass_on_2xx_and_3xx_only() {
        assert_eq!(status_outcome(b"HTTP/1.1 200 OK\r"), Outcome::Pass);
        assert_eq!(status_outcome(b"HTTP/1.0 302 Found"), Outcome::Pass);
        assert_eq!(status_outcome(b"HTTP/1.1 204"), Outcome::Pass);
        assert_eq!(
            status_outcome(b"HTTP/1.1 500 Internal Server Error\r"),
            Outcome::Fail("HTTP 500 Internal Server Error".into())
        );
        assert_eq!(status_outcome(b"HTTP/1.1 404"), Outcome::Fail("HTTP 404".into()));
        assert_eq!(
            status_outcome(b"HTTP/1.1 199 x"),
            Outcome::Fail("HTTP 199 x".into())
        );
        for bad in [
            &b"SSH-2.0-OpenSSH"[..],
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 abc",
            b"",
            b"HTTP/2 200",
        ] {
            match status_outcome(bad) {
                Outcome::Fail(why) => assert!(why.starts_with("not an HTTP status line"), "{why}"),
                Outcome::Pass => panic!("{bad:?} passed"),
            }
        }
    }

    #[test]
    fn io_errors_read_short() {
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(short(&e), "connection refused");
    }
}
