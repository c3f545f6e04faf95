//! Process attributes (SPEC 17) and the children's stdin: `user`, `group`,
//! `umask`, `nice`, `rlimits`, `clear_env`, `stdin` and `tty` (SPEC 18) of a
//! `[program.NAME]` table, validated with their positions.
//!
//! Parsing checks the syntax and keeps what was written (export maps that).
//! [`ProcessAttrs::credentials`] resolves names against the passwd and
//! group databases and checks that brood may switch to them; `brood run`
//! and `brood check` call it before anything starts, `brood export` does
//! not (the units run on another machine, which resolves names itself).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::Path;

use toml::{Spanned, Value};

use super::line_col;
use crate::error::Error;

/// A user or a group as the config names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdValue {
    Name(String),
    Id(u32),
}

impl std::fmt::Display for IdValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdValue::Name(n) => write!(f, "\"{n}\""),
            IdValue::Id(id) => write!(f, "{id}"),
        }
    }
}

/// `user` or `group`, with where it was written (`file:line:col`), for the
/// errors that resolving it may give later.
#[derive(Clone, Debug)]
pub struct IdSpec {
    pub value: IdValue,
    pub at: String,
}

/// Where a child's stdin comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StdinMode {
    /// /dev/null: reads see EOF at once (`brood spawn`, `stdin = "null"`).
    #[default]
    Null,
    /// A pipe brood holds open and never writes (`brood run`'s default):
    /// reads block until the child is gone or brood exits.
    Pipe,
}

/// One resource limit: soft and hard, `None` for infinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// One entry of `rlimits`: the RLIMIT_* resource, its limit, and where it
/// was written.
#[derive(Clone, Debug)]
pub struct RlimitSpec {
    pub resource: libc::c_int,
    pub limit: Limit,
    pub at: String,
}

/// The `rlimits` names brood knows: config name, RLIMIT_* constant and
/// systemd's `Limit*=` key.
pub const RLIMITS: &[(&str, libc::c_int, &str)] = &[
    ("as", libc::RLIMIT_AS as libc::c_int, "LimitAS"),
    ("core", libc::RLIMIT_CORE as libc::c_int, "LimitCORE"),
    ("cpu", libc::RLIMIT_CPU as libc::c_int, "LimitCPU"),
    ("data", libc::RLIMIT_DATA as libc::c_int, "LimitDATA"),
    ("fsize", libc::RLIMIT_FSIZE as libc::c_int, "LimitFSIZE"),
    ("memlock", libc::RLIMIT_MEMLOCK as libc::c_int, "LimitMEMLOCK"),
    ("msgqueue", libc::RLIMIT_MSGQUEUE as libc::c_int, "LimitMSGQUEUE"),
    ("nice", libc::RLIMIT_NICE as libc::c_int, "LimitNICE"),
    ("nofile", libc::RLIMIT_NOFILE as libc::c_int, "LimitNOFILE"),
    ("nproc", libc::RLIMIT_NPROC as libc::c_int, "LimitNPROC"),
    ("rss", libc::RLIMIT_RSS as libc::c_int, "LimitRSS"),
    ("rtprio", libc::RLIMIT_RTPRIO as libc::c_int, "LimitRTPRIO"),
    ("rttime", libc::RLIMIT_RTTIME as libc::c_int, "LimitRTTIME"),
    (
        "sigpending",
        libc::RLIMIT_SIGPENDING as libc::c_int,
        "LimitSIGPENDING",
    ),
    ("stack", libc::RLIMIT_STACK as libc::c_int, "LimitSTACK"),
];

/// The config name of an RLIMIT_* constant.
pub fn rlimit_name(resource: libc::c_int) -> &'static str {
    RLIMITS
        .iter()
        .find(|(_, r, _)| *r == resource)
        .map_or("?", |(name, _, _)| name)
}

/// What a program's children run as and with. All empty by default: the
/// child inherits brood's.
#[derive(Clone, Debug, Default)]
pub struct ProcessAttrs {
    pub user: Option<IdSpec>,
    pub group: Option<IdSpec>,
    pub umask: Option<u32>,
    pub nice: Option<i32>,
    /// In the order of [`RLIMITS`], each name once.
    pub rlimits: Vec<RlimitSpec>,
    /// Start from an empty environment instead of brood's.
    pub clear_env: bool,
    pub stdin: StdinMode,
    /// Run on a pseudo-terminal (SPEC 18): its own session, the pty's
    /// slave as controlling terminal and as stdin, stdout and stderr.
    pub tty: bool,
}

/// The ids a child switches to, resolved in the parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub uid: Option<u32>,
    pub gid: u32,
    /// Supplementary groups (`setgroups`), the gid among them.
    pub groups: Vec<u32>,
}

/// The attribute keys of a TOML program table, as serde read them.
pub struct TomlAttrs {
    pub user: Option<Spanned<Value>>,
    pub group: Option<Spanned<Value>>,
    pub umask: Option<Spanned<Value>>,
    pub nice: Option<Spanned<Value>>,
    pub rlimits: Option<BTreeMap<String, Spanned<Value>>>,
    pub clear_env: Option<bool>,
    pub stdin: Option<Spanned<String>>,
    pub tty: Option<Spanned<bool>>,
}

/// Validate the attribute keys of program `name`. `err` makes a located
/// error for a byte offset of the file's text.
pub fn from_toml(
    raw: TomlAttrs,
    name: &str,
    path: &Path,
    text: &str,
    err: &dyn Fn(usize, &str) -> Error,
) -> Result<ProcessAttrs, Error> {
    let at = |offset: usize| {
        let (line, col) = line_col(text, offset);
        format!("{}:{line}:{col}", path.display())
    };
    let id = |v: Option<Spanned<Value>>, what: &str| -> Result<Option<IdSpec>, Error> {
        let Some(v) = v else { return Ok(None) };
        let offset = v.span().start;
        let value = match v.into_inner() {
            Value::String(s) if valid_account_name(&s) => IdValue::Name(s),
            Value::String(s) => {
                return Err(err(
                    offset,
                    &format!(
                        "program '{name}': {what} '{}' is not a valid name",
                        s.escape_debug()
                    ),
                ))
            }
            // 2^32-1 is (uid_t)-1, which setuid() takes as "no change".
            Value::Integer(n) if (0..u32::MAX as i64).contains(&n) => IdValue::Id(n as u32),
            other => {
                return Err(err(
                    offset,
                    &format!(
                        "program '{name}': {what} must be a name or a number from 0 to 4294967294, not {}",
                        shown_value(&other)
                    ),
                ))
            }
        };
        Ok(Some(IdSpec {
            value,
            at: at(offset),
        }))
    };
    let user = id(raw.user, "user")?;
    let group = id(raw.group, "group")?;
    let umask = match raw.umask {
        None => None,
        Some(v) => {
            let offset = v.span().start;
            match v.into_inner() {
                Value::String(s) => {
                    Some(parse_umask(&s).map_err(|why| err(offset, &format!("program '{name}': {why}")))?)
                }
                other => {
                    return Err(err(
                        offset,
                        &format!(
                            "program '{name}': umask must be an octal string such as \"022\", not {}",
                            shown_value(&other)
                        ),
                    ))
                }
            }
        }
    };
    let nice = match raw.nice {
        None => None,
        Some(v) => {
            let offset = v.span().start;
            match v.into_inner() {
                Value::Integer(n) if (-20..=19).contains(&n) => Some(n as i32),
                other => {
                    return Err(err(
                        offset,
                        &format!(
                            "program '{name}': nice must be a number from -20 to 19, not {}",
                            shown_value(&other)
                        ),
                    ))
                }
            }
        }
    };
    let mut rlimits = Vec::new();
    for (key, v) in raw.rlimits.unwrap_or_default() {
        let offset = v.span().start;
        let Some(&(_, resource, _)) = RLIMITS.iter().find(|(n, _, _)| *n == key) else {
            let known: Vec<&str> = RLIMITS.iter().map(|(n, _, _)| *n).collect();
            return Err(err(
                offset,
                &format!(
                    "program '{name}': unknown rlimit '{}' (one of {})",
                    key.escape_debug(),
                    known.join(", ")
                ),
            ));
        };
        let limit = parse_limit(v.into_inner())
            .map_err(|why| err(offset, &format!("program '{name}': rlimits.{key}: {why}")))?;
        rlimits.push(RlimitSpec {
            resource,
            limit,
            at: at(offset),
        });
    }
    rlimits.sort_by_key(|l| RLIMITS.iter().position(|(_, x, _)| *x == l.resource));
    let tty = raw.tty.as_ref().is_some_and(|t| *t.get_ref());
    if let (true, Some(s)) = (tty, raw.stdin.as_ref()) {
        // On a terminal, stdin is the terminal: there is nothing to choose.
        return Err(err(
            s.span().start,
            &format!("program '{name}': stdin cannot be set with tty = true (the terminal is its stdin)"),
        ));
    }
    let stdin = match raw.stdin {
        None => StdinMode::Pipe,
        Some(s) => match s.get_ref().as_str() {
            "pipe" => StdinMode::Pipe,
            "null" => StdinMode::Null,
            other => {
                return Err(err(
                    s.span().start,
                    &format!(
                        "program '{name}': unknown stdin '{}' (pipe or null)",
                        other.escape_debug()
                    ),
                ))
            }
        },
    };
    Ok(ProcessAttrs {
        user,
        group,
        umask,
        nice,
        rlimits,
        clear_env: raw.clear_env.unwrap_or(false),
        stdin,
        tty,
    })
}

/// A value as a message shows it: its TOML text, cut short.
fn shown_value(v: &Value) -> String {
    let text = v.to_string();
    super::shown_text(&text)
}

/// What `useradd` and systemd accept, loosely: no NUL, no ':' or '/', no
/// whitespace, not empty, not all digits (a number is an id).
fn valid_account_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && !s.bytes().all(|b| b.is_ascii_digit())
        && !s
            .chars()
            .any(|c| c == ':' || c == '/' || c == '\0' || c.is_whitespace())
}

/// `"022"`, `"0022"`, `"0o022"` or `"77"`: one to four octal digits (an
/// optional `0o` first), at most 0777. A TOML integer is refused: `22` and
/// `0o22` would read alike once parsed, and `22` is not what anyone means.
pub fn parse_umask(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let value =
        if !digits.is_empty() && digits.len() <= 4 && digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            u32::from_str_radix(digits, 8).ok()
        } else {
            None
        };
    match value {
        Some(v) if v <= 0o777 => Ok(v),
        _ => Err(format!(
            "invalid umask '{}' (octal digits, 000 to 777, such as \"022\")",
            super::shown_text(text).escape_debug()
        )),
    }
}

/// A number, `"infinity"` (or `"unlimited"`) for both limits, or a table
/// `{ soft = .., hard = .. }` of those. The soft limit may not exceed the
/// hard one.
fn parse_limit(v: Value) -> Result<Limit, String> {
    fn one(v: &Value) -> Result<Option<u64>, String> {
        match v {
            Value::Integer(n) if *n >= 0 => Ok(Some(*n as u64)),
            Value::String(s) if s == "infinity" || s == "unlimited" => Ok(None),
            other => Err(format!(
                "a limit is a number from 0, or \"infinity\", not {}",
                shown_value(other)
            )),
        }
    }
    let limit = match &v {
        Value::Table(t) => {
            if let Some(k) = t.keys().find(|k| *k != "soft" && *k != "hard") {
                return Err(format!("unknown key '{}' (soft and hard)", k.escape_debug()));
            }
            let (Some(soft), Some(hard)) = (t.get("soft"), t.get("hard")) else {
                return Err("give both soft and hard, or one value for both".to_string());
            };
            Limit {
                soft: one(soft)?,
                hard: one(hard)?,
            }
        }
        other => {
            let both = one(other)?;
            Limit {
                soft: both,
                hard: both,
            }
        }
    };
    let above = match (limit.soft, limit.hard) {
        (None, Some(_)) => true,
        (Some(s), Some(h)) => s > h,
        _ => false,
    };
    if above {
        return Err("the soft limit is above the hard one".to_string());
    }
    Ok(limit)
}

impl ProcessAttrs {
    /// The ids to switch to: `None` when the child keeps brood's (nothing
    /// set, or set to what brood runs as already).
    ///
    /// `user` alone: its uid, its primary group, and its supplementary
    /// groups from the group database (`getgrouplist`), as `login` and
    /// systemd's `User=` do. `group` as well: that gid instead of the
    /// primary one, the supplementary groups still the user's. `group`
    /// alone: that gid and no other group (brood's own supplementary groups
    /// are dropped). A uid with no passwd entry needs `group` too.
    /// Switching needs root: without it, asking for any other ids is an
    /// error here rather than a failed exec later.
    pub fn credentials(&self, program: &str) -> Result<Option<Credentials>, Error> {
        if self.user.is_none() && self.group.is_none() {
            return Ok(None);
        }
        let located =
            |spec: &IdSpec, msg: String| Error::usage(format!("{}: program '{program}': {msg}", spec.at));
        let group = match &self.group {
            None => None,
            Some(spec) => Some(match &spec.value {
                IdValue::Id(gid) => *gid,
                IdValue::Name(name) => match nix::unistd::Group::from_name(name) {
                    Ok(Some(g)) => g.gid.as_raw(),
                    Ok(None) => return Err(located(spec, format!("unknown group '{name}'"))),
                    Err(e) => return Err(located(spec, format!("cannot look up group '{name}': {e}"))),
                },
            }),
        };
        let creds = match &self.user {
            None => {
                let gid = group.unwrap_or(0);
                Credentials {
                    uid: None,
                    gid,
                    groups: vec![gid],
                }
            }
            Some(spec) => {
                let (uid, entry) = match &spec.value {
                    IdValue::Name(name) => match nix::unistd::User::from_name(name) {
                        Ok(Some(u)) => (u.uid.as_raw(), Some(u)),
                        Ok(None) => return Err(located(spec, format!("unknown user '{name}'"))),
                        Err(e) => return Err(located(spec, format!("cannot look up user '{name}': {e}"))),
                    },
                    IdValue::Id(uid) => (
                        *uid,
                        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(*uid))
                            .map_err(|e| located(spec, format!("cannot look up uid {uid}: {e}")))?,
                    ),
                };
                match (entry, group) {
                    (Some(u), group) => {
                        let gid = group.unwrap_or(u.gid.as_raw());
                        let cname = CString::new(u.name.as_bytes()).map_err(|_| {
                            located(spec, format!("user name '{}' contains a NUL byte", u.name))
                        })?;
                        let groups = nix::unistd::getgrouplist(&cname, nix::unistd::Gid::from_raw(gid))
                            .map_err(|e| {
                                located(spec, format!("cannot list the groups of '{}': {e}", u.name))
                            })?;
                        Credentials {
                            uid: Some(uid),
                            gid,
                            groups: groups.into_iter().map(|g| g.as_raw()).collect(),
                        }
                    }
                    (None, Some(gid)) => Credentials {
                        uid: Some(uid),
                        gid,
                        groups: vec![gid],
                    },
                    (None, None) => {
                        return Err(located(
                            spec,
                            format!("uid {uid} has no passwd entry, so no group: set group as well"),
                        ))
                    }
                }
            }
        };
        let (euid, egid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        if euid == 0 {
            return Ok(Some(creds));
        }
        if creds.uid.is_none_or(|u| u == euid) && creds.gid == egid {
            // Asking for what brood is already: nothing to switch (and
            // setgroups would fail without root).
            return Ok(None);
        }
        let (what, spec) = match (&self.user, &self.group) {
            (Some(u), _) if creds.uid != Some(euid) => ("user", u),
            (_, Some(g)) => ("group", g),
            (Some(u), None) => ("user", u),
            (None, None) => return Ok(None),
        };
        Err(located(
            spec,
            format!(
                "{what} = {} needs root: brood runs as uid {euid} and cannot switch user or group",
                spec.value
            ),
        ))
    }

    /// Resource limits that raise a hard limit above brood's own: only root
    /// may (checked before anything starts, so the error names the key).
    pub fn check_limits(&self, program: &str) -> Result<(), Error> {
        if nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        for RlimitSpec { resource, limit, at } in &self.rlimits {
            let mut current = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes only into `current`, a local.
            if unsafe { libc::getrlimit(*resource as _, &mut current) } != 0 {
                continue;
            }
            let wanted = limit.hard.unwrap_or(libc::RLIM_INFINITY);
            if wanted > current.rlim_max {
                return Err(Error::usage(format!(
                    "{at}: program '{program}': rlimits.{} asks for a hard limit of {} above brood's ({}): raising it needs root",
                    rlimit_name(*resource),
                    limit.hard.map_or("infinity".to_string(), |h| h.to_string()),
                    current.rlim_max
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umask_forms() {
        assert_eq!(parse_umask("022"), Ok(0o22));
        assert_eq!(parse_umask("0022"), Ok(0o22));
        assert_eq!(parse_umask("0o027"), Ok(0o27));
        assert_eq!(parse_umask("7"), Ok(0o7));
        assert_eq!(parse_umask("777"), Ok(0o777));
        for bad in ["", "8", "0999", "1777", "02222", "abc", "-22", "0x22", "0o"] {
            assert!(parse_umask(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_forms() {
        let v =
            |s: &str| -> Value { toml::from_str::<toml::Table>(&format!("x = {s}")).unwrap()["x"].clone() };
        assert_eq!(
            parse_limit(v("1024")),
            Ok(Limit {
                soft: Some(1024),
                hard: Some(1024)
            })
        );
        assert_eq!(
            parse_limit(v("\"infinity\"")),
            Ok(Limit {
                soft: None,
                hard: None
            })
        );
        assert_eq!(
            parse_limit(v("{ soft = 10, hard = \"infinity\" }")),
            Ok(Limit {
                soft: Some(10),
                hard: None
            })
        );
        for bad in [
            "-1",
            "\"lots\"",
            "{ soft = 10 }",
            "{ soft = 20, hard = 10 }",
            "{ soft = \"infinity\", hard = 1 }",
            "1.5",
            "{ sof = 1, hard = 2 }",
        ] {
            assert!(parse_limit(v(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn account_names() {
        assert!(valid_account_name("www-data"));
        assert!(valid_account_name("_apt"));
        for bad in ["", "123", "a b", "a:b", "a/b"] {
            assert!(!valid_account_name(bad), "{bad}");
        }
    }
}
