//! `brood.toml`: `[program.NAME]` tables, read with serde. Unknown keys are
//! errors (a typo must not be silently ignored); every error names the file,
//! line and column.
//!
//! A `[defaults]` table may hold any per-program key. It is applied to the
//! parsed document before serde sees it: each key a program does not set
//! is copied, with its span, into the program's table. A program's own key
//! replaces the default whole (tables such as `log` or `env` are not
//! merged), `command` and `shell` count as one key, and an error in a
//! default points at the `[defaults]` line it came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::logspec::{self, LogSpec, LogTarget};
use super::probe::{
    DEFAULT_HEALTH_FAILURES, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_TIMEOUT, DEFAULT_READY_INTERVAL,
    DEFAULT_READY_TIMEOUT, MIN_INTERVAL, READY_FD_RANGE,
};
use super::{
    duration_from_secs, located, parse_duration, shown_number, valid_name, HealthSpec, ProbeSpec,
    ProgramSpec, ReadyKind, ReadySpec, RestartPolicy, RunProgram, SupervisorSpec,
};
use crate::core::graph::{start_order, Condition, ShutdownOn, Strategy};
use crate::error::Error;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Already copied into every program by [`apply_defaults`]; read here
    /// so that its keys are checked even where every program sets them.
    #[serde(rename = "defaults")]
    _defaults: Option<Spanned<Program>>,
    #[serde(default)]
    program: BTreeMap<String, Spanned<Program>>,
    /// Read by [`parse_supervisor`].
    #[allow(dead_code)]
    supervisor: Option<toml::Value>,
}

#[derive(Deserialize)]
struct SupervisorFile {
    supervisor: Option<SupervisorTable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SupervisorTable {
    strategy: Option<Spanned<String>>,
    max_restarts: Option<Spanned<i64>>,
    restart_window: Option<Spanned<DurationValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Program {
    command: Option<Spanned<Vec<String>>>,
    shell: Option<Spanned<String>>,
    numprocs: Option<Spanned<i64>>,
    restart: Option<Spanned<String>>,
    backoff: Option<Backoff>,
    max_restarts: Option<Spanned<i64>>,
    restart_window: Option<Spanned<DurationValue>>,
    stop_signal: Option<Spanned<SignalValue>>,
    stop_timeout: Option<Spanned<DurationValue>>,
    cwd: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<EnvValue>>,
    #[serde(default)]
    depends_on: BTreeMap<String, Spanned<String>>,
    shutdown_on: Option<Spanned<String>>,
    // Process attributes and stdin (SPEC 17), checked in `attrs`.
    user: Option<Spanned<toml::Value>>,
    group: Option<Spanned<toml::Value>>,
    umask: Option<Spanned<toml::Value>>,
    nice: Option<Spanned<toml::Value>>,
    rlimits: Option<BTreeMap<String, Spanned<toml::Value>>>,
    clear_env: Option<bool>,
    stdin: Option<Spanned<String>>,
    /// Run on a pseudo-terminal (SPEC 18).
    tty: Option<Spanned<bool>>,
    log: Option<Spanned<Log>>,
    ready: Option<Spanned<Ready>>,
    health: Option<Spanned<Health>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Log {
    file: Option<Spanned<String>>,
    dir: Option<Spanned<String>>,
    max_size: Option<Spanned<SizeValue>>,
    keep: Option<Spanned<i64>>,
    timestamps: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Text(String),
    Bytes(i64),
}

/// `ready = { KIND = ..., timeout, interval }`: exactly one KIND.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ready {
    notify: Option<Spanned<bool>>,
    watchdog: Option<Spanned<DurationValue>>,
    fd: Option<Spanned<i64>>,
    log: Option<Spanned<String>>,
    tcp: Option<Spanned<String>>,
    http: Option<Spanned<String>>,
    exec: Option<Spanned<Vec<String>>>,
    timeout: Option<Spanned<DurationValue>>,
    interval: Option<Spanned<DurationValue>>,
}

/// `health = { KIND = ..., interval, timeout, failures }`: exactly one of
/// tcp, http, exec.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Health {
    tcp: Option<Spanned<String>>,
    http: Option<Spanned<String>>,
    exec: Option<Spanned<Vec<String>>>,
    interval: Option<Spanned<DurationValue>>,
    timeout: Option<Spanned<DurationValue>>,
    failures: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Backoff {
    initial: Option<Spanned<DurationValue>>,
    max: Option<Spanned<DurationValue>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Text(String),
    Seconds(f64),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SignalValue {
    Name(String),
    Number(i64),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EnvValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

/// Copy each `[defaults]` key into every `[program.NAME]` table that does
/// not set it (spans kept, so errors still point into the file).
fn apply_defaults(doc: &mut DeTable<'_>) {
    let Some(defaults) = doc.get("defaults").and_then(|d| d.get_ref().as_table()).cloned() else {
        return;
    };
    let Some(programs) = doc.get_mut("program").map(Spanned::get_mut) else {
        return;
    };
    let DeValue::Table(programs) = programs else {
        return;
    };
    for (_, program) in programs.iter_mut() {
        let DeValue::Table(own) = program.get_mut() else {
            continue;
        };
        // `command` and `shell` are two spellings of one setting.
        let has_command = own.contains_key("command") || own.contains_key("shell");
        for (key, value) in defaults.iter() {
            let is_command = matches!(key.get_ref().as_ref(), "command" | "shell");
            if own.contains_key(key.get_ref().as_ref()) || (is_command && has_command) {
                continue;
            }
            own.insert(key.clone(), value.clone());
        }
    }
}

pub fn parse(text: &str, path: &Path, dir: &Path) -> Result<Vec<RunProgram>, Error> {
    let fail = |e: toml::de::Error| {
        let offset = e.span().map_or(0, |s| s.start);
        located(path, text, offset, e.message().trim())
    };
    let mut doc = DeTable::parse(text).map_err(fail)?;
    apply_defaults(doc.get_mut());
    let file = File::deserialize(toml::de::Deserializer::from(doc)).map_err(fail)?;
    let err = |offset: usize, msg: &str| located(path, text, offset, msg);
    let mut programs = Vec::new();
    for (name, table) in file.program {
        let start = table.span().start;
        if !valid_name(&name) {
            return Err(err(
                start,
                &format!("invalid program name '{name}' (letters, digits, '-' and '_')"),
            ));
        }
        let prog = table.into_inner();
        let attrs = super::attrs::from_toml(
            super::attrs::TomlAttrs {
                user: prog.user,
                group: prog.group,
                umask: prog.umask,
                nice: prog.nice,
                rlimits: prog.rlimits,
                clear_env: prog.clear_env,
                stdin: prog.stdin,
                tty: prog.tty,
            },
            &name,
            path,
            text,
            &err,
        )?;
        let (program, args) = match (prog.command, prog.shell) {
            (Some(_), Some(s)) => {
                return Err(err(
                    s.span().start,
                    &format!("program '{name}': give command or shell, not both"),
                ))
            }
            (None, None) => {
                return Err(err(
                    start,
                    &format!("program '{name}' needs command = [...] or shell = \"...\""),
                ))
            }
            (Some(c), None) => {
                let span = c.span().start;
                if c.get_ref().iter().any(|a| a.contains('\0')) {
                    return Err(err(
                        span,
                        &format!("program '{name}': command contains a NUL byte"),
                    ));
                }
                let mut argv = c.into_inner().into_iter();
                let Some(first) = argv.next().filter(|s| !s.is_empty()) else {
                    return Err(err(span, &format!("program '{name}': command is empty")));
                };
                (first.into(), argv.map(Into::into).collect())
            }
            (None, Some(s)) => {
                if s.get_ref().trim().is_empty() {
                    return Err(err(s.span().start, &format!("program '{name}': shell is empty")));
                }
                if s.get_ref().contains('\0') {
                    return Err(err(
                        s.span().start,
                        &format!("program '{name}': shell contains a NUL byte"),
                    ));
                }
                ("/bin/sh".into(), vec!["-c".into(), s.into_inner().into()])
            }
        };
        let numprocs = match prog.numprocs {
            None => 1,
            Some(n) if (1..=10_000).contains(n.get_ref()) => *n.get_ref() as u32,
            Some(n) => return Err(err(n.span().start, "numprocs must be between 1 and 10000")),
        };
        let restart = match prog.restart {
            None => RestartPolicy::OnFailure,
            Some(r) => match r.get_ref().as_str() {
                "always" => RestartPolicy::Always,
                "on-failure" => RestartPolicy::OnFailure,
                "never" => RestartPolicy::Never,
                other => {
                    return Err(err(
                        r.span().start,
                        &format!("unknown restart policy '{other}' (always, on-failure or never)"),
                    ))
                }
            },
        };
        let duration = |v: Option<Spanned<DurationValue>>, what: &str, default: Duration| match v {
            None => Ok(default),
            Some(v) => {
                let at = v.span().start;
                let parsed = match v.into_inner() {
                    DurationValue::Text(t) => parse_duration(&t),
                    DurationValue::Seconds(s) => duration_from_secs(s)
                        .map_err(|why| format!("invalid duration {}: {why}", shown_number(s))),
                };
                parsed.map_err(|m| err(at, &format!("{what}: {m}")))
            }
        };
        let (initial, max) = match prog.backoff {
            Some(b) => (b.initial, b.max),
            None => (None, None),
        };
        let backoff_initial = duration(initial, "backoff.initial", super::DEFAULT_BACKOFF_INITIAL)?;
        let backoff_max = duration(max, "backoff.max", super::DEFAULT_BACKOFF_MAX)?;
        let restart_window = duration(
            prog.restart_window,
            "restart_window",
            super::DEFAULT_RESTART_WINDOW,
        )?;
        let stop_timeout = duration(prog.stop_timeout, "stop_timeout", super::DEFAULT_STOP_TIMEOUT)?;
        let max_restarts = match prog.max_restarts {
            None => super::DEFAULT_MAX_RESTARTS,
            Some(n) if (0..=1_000_000).contains(n.get_ref()) => *n.get_ref() as u32,
            Some(n) => return Err(err(n.span().start, "max_restarts must be 0 or more")),
        };
        let stop_signal = match prog.stop_signal {
            None => libc::SIGTERM,
            Some(s) => {
                let at = s.span().start;
                let parsed = match s.get_ref() {
                    SignalValue::Name(n) => crate::signals::parse(n),
                    SignalValue::Number(n) => i32::try_from(*n)
                        .ok()
                        .and_then(|n| crate::signals::parse(&n.to_string())),
                };
                let shown = match s.into_inner() {
                    SignalValue::Name(n) => n,
                    SignalValue::Number(n) => n.to_string(),
                };
                parsed.ok_or_else(|| err(at, &format!("unknown signal '{shown}'")))?
            }
        };
        let cwd_explicit = prog.cwd.is_some();
        let cwd = match prog.cwd {
            None => dir.to_path_buf(),
            Some(c) if c.get_ref().contains('\0') => {
                return Err(err(
                    c.span().start,
                    &format!("program '{name}': cwd contains a NUL byte"),
                ))
            }
            Some(c) => {
                let p = PathBuf::from(c.get_ref());
                if p.is_absolute() {
                    p
                } else {
                    dir.join(p)
                }
            }
        };
        let mut env = Vec::new();
        for (k, v) in prog.env {
            // The child's environment is `KEY=VALUE` C strings: a key with
            // `=` would be read back as another key, a NUL would cut it.
            let bad_key = if k.is_empty() {
                Some("is empty")
            } else if k.contains('=') {
                Some("contains '='")
            } else if k.contains('\0') {
                Some("contains a NUL byte")
            } else {
                None
            };
            if let Some(why) = bad_key {
                return Err(err(
                    v.span().start,
                    &format!("program '{name}': env key '{}' {why}", k.escape_debug()),
                ));
            }
            let at = v.span().start;
            let value = match v.into_inner() {
                EnvValue::Text(s) => s,
                EnvValue::Integer(i) => i.to_string(),
                EnvValue::Float(f) => f.to_string(),
                EnvValue::Bool(b) => b.to_string(),
            };
            if value.contains('\0') {
                return Err(err(at, &format!("program '{name}': env {k} contains a NUL byte")));
            }
            env.push((k.into(), value.into()));
        }
        let mut depends_on = Vec::new();
        for (dep, cond) in prog.depends_on {
            let at = cond.span().start;
            let Some(c) = Condition::parse(cond.get_ref()) else {
                return Err(err(
                    at,
                    &format!(
                        "program '{name}': depends_on {dep}: unknown condition '{}' (started, ready, exited or succeeded)",
                        cond.get_ref()
                    ),
                ));
            };
            if dep == name {
                return Err(err(at, &format!("program '{name}' depends on itself")));
            }
            depends_on.push((dep, c, at));
        }
        let shutdown_on = match prog.shutdown_on {
            None => ShutdownOn::Never,
            Some(v) => ShutdownOn::parse(v.get_ref()).ok_or_else(|| {
                err(
                    v.span().start,
                    &format!(
                        "program '{name}': unknown shutdown_on '{}' (never, exit or failure)",
                        v.get_ref()
                    ),
                )
            })?,
        };
        let log = match prog.log {
            None => None,
            Some(l) => Some(log_spec(l, &name, dir, &err)?),
        };
        let ready = match prog.ready {
            None => None,
            Some(r) => Some(ready_spec(&name, r, &err, &duration)?),
        };
        let health = match prog.health {
            None => None,
            Some(h) => Some(health_spec(&name, h, &err, &duration)?),
        };
        programs.push((
            start,
            depends_on,
            RunProgram {
                spec: ProgramSpec {
                    name,
                    program,
                    args,
                    env,
                    cwd: Some(cwd),
                    stop_signal,
                    stop_timeout,
                    counter_arg: false,
                    attrs,
                },
                numprocs,
                restart,
                backoff_initial,
                backoff_max,
                max_restarts,
                restart_window,
                cwd_explicit,
                env_sets_port: false,
                depends_on: Vec::new(),
                shutdown_on,
                log,
                ready,
                health,
            },
        ));
    }
    if programs.is_empty() {
        return Err(Error::usage(format!(
            "{}: no [program.NAME] tables",
            path.display()
        )));
    }
    // File order, not name order.
    programs.sort_by_key(|(start, _, _)| *start);
    check_dependencies(&programs, &err)?;
    Ok(programs
        .into_iter()
        .map(|(_, deps, mut p)| {
            p.depends_on = deps.into_iter().map(|(d, c, _)| (d, c)).collect();
            p
        })
        .collect())
}

type Located = (usize, Vec<(String, Condition, usize)>, RunProgram);

/// Every dependency names a program of the file, and there is no cycle
/// (named along its path: `depends_on cycle: web -> cache -> web`).
fn check_dependencies(programs: &[Located], err: &impl Fn(usize, &str) -> Error) -> Result<(), Error> {
    let names: Vec<String> = programs.iter().map(|(_, _, p)| p.spec.name.clone()).collect();
    let index: std::collections::HashMap<&str, usize> =
        names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let mut deps = Vec::with_capacity(programs.len());
    for (_, list, p) in programs {
        let mut mine = Vec::new();
        for (dep, _, at) in list {
            match index.get(dep.as_str()) {
                Some(&i) => mine.push(i),
                None => {
                    return Err(err(
                        *at,
                        &format!(
                            "program '{}' depends on '{dep}', which is not a program of this file",
                            p.spec.name
                        ),
                    ))
                }
            }
        }
        deps.push(mine);
    }
    if let Err(cycle) = start_order(&names, &deps) {
        let first = index.get(cycle[0].as_str()).copied().unwrap_or(0);
        return Err(err(
            programs[first].0,
            &format!("depends_on cycle: {}", cycle.join(" -> ")),
        ));
    }
    Ok(())
}

/// The `[supervisor]` table: strategy and the supervisor-wide budget.
pub fn parse_supervisor(text: &str, path: &Path) -> Result<SupervisorSpec, Error> {
    let err = |offset: usize, msg: &str| located(path, text, offset, msg);
    let file: SupervisorFile = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        err(offset, e.message().trim())
    })?;
    let Some(table) = file.supervisor else {
        return Ok(SupervisorSpec {
            restart_window: super::DEFAULT_RESTART_WINDOW,
            ..Default::default()
        });
    };
    let strategy = match table.strategy {
        None => Strategy::OneForOne,
        Some(s) => Strategy::parse(s.get_ref()).ok_or_else(|| {
            err(
                s.span().start,
                &format!(
                    "unknown strategy '{}' (one_for_one, one_for_all or rest_for_one)",
                    s.get_ref()
                ),
            )
        })?,
    };
    let max_restarts = match table.max_restarts {
        None => None,
        Some(n) if (0..=1_000_000).contains(n.get_ref()) => Some(*n.get_ref() as u32),
        Some(n) => return Err(err(n.span().start, "supervisor max_restarts must be 0 or more")),
    };
    let restart_window = match table.restart_window {
        None => super::DEFAULT_RESTART_WINDOW,
        Some(v) => {
            let at = v.span().start;
            match v.into_inner() {
                DurationValue::Text(t) => parse_duration(&t),
                DurationValue::Seconds(s) => duration_from_secs(s)
                    .map_err(|why| format!("invalid duration {}: {why}", shown_number(s))),
            }
            .map_err(|m| err(at, &format!("supervisor restart_window: {m}")))?
        }
    };
    Ok(SupervisorSpec {
        strategy,
        max_restarts,
        restart_window,
    })
}

/// A `log` table, validated: exactly one of `file` and `dir`, a size, a
/// count to keep.
fn log_spec(
    log: Spanned<Log>,
    name: &str,
    dir: &Path,
    err: &dyn Fn(usize, &str) -> Error,
) -> Result<LogSpec, Error> {
    let at = log.span().start;
    let log = log.into_inner();
    let path = |p: Spanned<String>, what: &str| {
        if p.get_ref().is_empty() {
            return Err(err(
                p.span().start,
                &format!("program '{name}': log.{what} is empty"),
            ));
        }
        if p.get_ref().contains('\0') {
            return Err(err(
                p.span().start,
                &format!("program '{name}': log.{what} contains a NUL byte"),
            ));
        }
        Ok(logspec::config_relative(dir, p.get_ref()))
    };
    let target = match (log.file, log.dir) {
        (Some(f), None) => LogTarget::File(path(f, "file")?),
        (None, Some(d)) => LogTarget::Dir(path(d, "dir")?),
        (Some(_), Some(d)) => {
            return Err(err(
                d.span().start,
                &format!("program '{name}': log takes file or dir, not both"),
            ))
        }
        (None, None) => {
            return Err(err(
                at,
                &format!("program '{name}': log needs file = \"...\" or dir = \"...\""),
            ))
        }
    };
    let max_size = match log.max_size {
        None => logspec::DEFAULT_MAX_SIZE,
        Some(s) => {
            let at = s.span().start;
            match s.into_inner() {
                SizeValue::Text(t) => logspec::parse_size(&t),
                SizeValue::Bytes(b) => {
                    u64::try_from(b).map_err(|_| format!("invalid size {b}: must be 0 or more"))
                }
            }
            .map_err(|m| err(at, &format!("log.max_size: {m}")))?
        }
    };
    let keep = match log.keep {
        None => logspec::DEFAULT_KEEP,
        Some(k) => u32::try_from(*k.get_ref())
            .ok()
            .filter(|k| *k <= logspec::MAX_KEEP)
            .ok_or_else(|| {
                err(
                    k.span().start,
                    &format!("log.keep must be between 0 and {}", logspec::MAX_KEEP),
                )
            })?,
    };
    Ok(LogSpec {
        target,
        max_size,
        keep,
        timestamps: log.timestamps.unwrap_or(false),
    })
}

type ErrAt<'a> = &'a dyn Fn(usize, &str) -> Error;
type DurationOf<'a> = &'a dyn Fn(Option<Spanned<DurationValue>>, &str, Duration) -> Result<Duration, Error>;

/// A probe's interval or timeout: a duration, and at least `min`.
fn at_least(
    v: Option<Spanned<DurationValue>>,
    what: &str,
    default: Duration,
    min: Duration,
    err: ErrAt,
    duration: DurationOf,
) -> Result<Duration, Error> {
    let at = v.as_ref().map_or(0, |v| v.span().start);
    let d = duration(v, what, default)?;
    if d < min {
        let shown = if min == MIN_INTERVAL {
            "at least 10ms"
        } else {
            "more than 0"
        };
        return Err(err(at, &format!("{what} must be {shown}")));
    }
    Ok(d)
}

/// The probe kinds both tables share: (span, spec) of each one given.
fn probe_kinds(
    name: &str,
    table: &str,
    tcp: Option<Spanned<String>>,
    http: Option<Spanned<String>>,
    exec: Option<Spanned<Vec<String>>>,
    err: ErrAt,
) -> Result<Vec<(usize, &'static str, ProbeSpec)>, Error> {
    let mut kinds = Vec::new();
    if let Some(t) = tcp {
        let at = t.span().start;
        let addr = crate::probe::net::parse_host_port(t.get_ref())
            .map_err(|why| err(at, &format!("program '{name}': {table}.tcp: {why}")))?;
        kinds.push((at, "tcp", ProbeSpec::Tcp(addr)));
    }
    if let Some(h) = http {
        let at = h.span().start;
        let target = crate::probe::net::parse_http_url(h.get_ref())
            .map_err(|why| err(at, &format!("program '{name}': {table}.http: {why}")))?;
        kinds.push((at, "http", ProbeSpec::Http(target)));
    }
    if let Some(e) = exec {
        let at = e.span().start;
        let argv = e.into_inner();
        if argv.first().is_none_or(|p| p.is_empty()) {
            return Err(err(at, &format!("program '{name}': {table}.exec is empty")));
        }
        if argv.iter().any(|a| a.contains('\0')) {
            return Err(err(
                at,
                &format!("program '{name}': {table}.exec contains a NUL byte"),
            ));
        }
        kinds.push((
            at,
            "exec",
            ProbeSpec::Exec(argv.into_iter().map(Into::into).collect()),
        ));
    }
    Ok(kinds)
}

/// One kind, or an error that names what is missing or doubled.
fn exactly_one<T>(
    name: &str,
    table: &str,
    table_at: usize,
    mut kinds: Vec<(usize, &'static str, T)>,
    allowed: &str,
    err: ErrAt,
) -> Result<T, Error> {
    kinds.sort_by_key(|(at, _, _)| *at);
    match kinds.len() {
        0 => Err(err(
            table_at,
            &format!("program '{name}': {table} needs one of {allowed}"),
        )),
        1 => Ok(kinds.remove(0).2),
        _ => Err(err(
            kinds[1].0,
            &format!(
                "program '{name}': {table} takes one kind, not both {} and {}",
                kinds[0].1, kinds[1].1
            ),
        )),
    }
}

fn ready_spec(name: &str, r: Spanned<Ready>, err: ErrAt, duration: DurationOf) -> Result<ReadySpec, Error> {
    let table_at = r.span().start;
    let r = r.into_inner();
    let mut kinds = Vec::new();
    match r.notify {
        Some(n) if !*n.get_ref() => {
            return Err(err(
                n.span().start,
                &format!("program '{name}': ready.notify must be true (leave ready out for none)"),
            ))
        }
        Some(n) => {
            let watchdog = match r.watchdog {
                None => None,
                Some(w) => Some(at_least(
                    Some(w),
                    "ready.watchdog",
                    Duration::ZERO,
                    MIN_INTERVAL,
                    err,
                    duration,
                )?),
            };
            kinds.push((n.span().start, "notify", ReadyKind::Notify { watchdog }));
        }
        None => {
            if let Some(w) = &r.watchdog {
                return Err(err(
                    w.span().start,
                    &format!("program '{name}': ready.watchdog needs notify = true"),
                ));
            }
        }
    }
    if let Some(fd) = r.fd {
        let at = fd.span().start;
        let n = i32::try_from(*fd.get_ref())
            .ok()
            .filter(|n| READY_FD_RANGE.contains(n))
            .ok_or_else(|| {
                err(
                    at,
                    &format!(
                        "program '{name}': ready.fd must be between {} and {} (0, 1 and 2 are stdio)",
                        READY_FD_RANGE.start(),
                        READY_FD_RANGE.end()
                    ),
                )
            })?;
        kinds.push((at, "fd", ReadyKind::Fd(n)));
    }
    if let Some(l) = r.log {
        let at = l.span().start;
        let matcher = crate::probe::LineMatcher::new(l.get_ref())
            .map_err(|why| err(at, &format!("program '{name}': ready.log: {why}")))?;
        kinds.push((at, "log", ReadyKind::Log(matcher)));
    }
    for (at, key, probe) in probe_kinds(name, "ready", r.tcp, r.http, r.exec, err)? {
        kinds.push((at, key, ReadyKind::Probe(probe)));
    }
    let kind = exactly_one(
        name,
        "ready",
        table_at,
        kinds,
        "notify, fd, log, tcp, http, exec",
        err,
    )?;
    Ok(ReadySpec {
        kind,
        timeout: at_least(
            r.timeout,
            "ready.timeout",
            DEFAULT_READY_TIMEOUT,
            Duration::from_nanos(1),
            err,
            duration,
        )?,
        interval: at_least(
            r.interval,
            "ready.interval",
            DEFAULT_READY_INTERVAL,
            MIN_INTERVAL,
            err,
            duration,
        )?,
    })
}

fn health_spec(
    name: &str,
    h: Spanned<Health>,
    err: ErrAt,
    duration: DurationOf,
) -> Result<HealthSpec, Error> {
    let table_at = h.span().start;
    let h = h.into_inner();
    let kinds = probe_kinds(name, "health", h.tcp, h.http, h.exec, err)?;
    let probe = exactly_one(name, "health", table_at, kinds, "tcp, http, exec", err)?;
    let failures = match h.failures {
        None => DEFAULT_HEALTH_FAILURES,
        Some(n) if (1..=1_000).contains(n.get_ref()) => *n.get_ref() as u32,
        Some(n) => {
            return Err(err(
                n.span().start,
                &format!("program '{name}': health.failures must be between 1 and 1000"),
            ))
        }
    };
    Ok(HealthSpec {
        probe,
        interval: at_least(
            h.interval,
            "health.interval",
            DEFAULT_HEALTH_INTERVAL,
            MIN_INTERVAL,
            err,
            duration,
        )?,
        timeout: at_least(
            h.timeout,
            "health.timeout",
            DEFAULT_HEALTH_TIMEOUT,
            Duration::from_nanos(1),
            err,
            duration,
        )?,
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{IdValue, StdinMode};
    use super::*;

    fn p(text: &str) -> Result<Vec<RunProgram>, Error> {
        parse(text, Path::new("brood.toml"), Path::new("/srv"))
    }

    #[test]
    fn reads_every_key() {
        let got = p(r#"
[program.web]
command = ["python3", "-m", "http.server", "8000"]
numprocs = 2
restart = "always"
backoff = { initial = "200ms", max = "3s" }
max_restarts = 4
restart_window = "10s"
stop_signal = "INT"
stop_timeout = 2
cwd = "app"
env = { PORT = 8000, DEBUG = true }

[program.aworker]
shell = "echo $HOME"
"#)
        .unwrap();
        assert_eq!(got[0].spec.name, "web", "file order kept");
        let web = &got[0];
        assert_eq!(web.numprocs, 2);
        assert_eq!(web.restart, RestartPolicy::Always);
        assert_eq!(web.backoff_initial, Duration::from_millis(200));
        assert_eq!(web.backoff_max, Duration::from_secs(3));
        assert_eq!(web.max_restarts, 4);
        assert_eq!(web.spec.stop_signal, libc::SIGINT);
        assert_eq!(web.spec.stop_timeout, Duration::from_secs(2));
        assert_eq!(web.spec.cwd.as_deref(), Some(Path::new("/srv/app")));
        assert!(web.spec.env.contains(&("PORT".into(), "8000".into())));
        assert_eq!(got[1].spec.args, ["-c", "echo $HOME"]);
    }

    #[test]
    fn dependencies_and_the_exit_policy_are_read_and_checked() {
        let got = p(r#"
[program.db]
command = ["db"]
[program.web]
command = ["web"]
depends_on = { db = "ready" }
shutdown_on = "failure"
"#)
        .unwrap();
        assert_eq!(got[1].depends_on, [("db".to_string(), Condition::Ready)]);
        assert_eq!(got[1].shutdown_on, ShutdownOn::Failure);
        let cases = [
            (
                "[program.a]\ncommand=[\"x\"]\ndepends_on = { b = \"ready\" }\n",
                "brood.toml:3:20: program 'a' depends on 'b', which is not a program",
            ),
            (
                "[program.a]\ncommand=[\"x\"]\ndepends_on = { a = \"ready\" }\n",
                "brood.toml:3:20: program 'a' depends on itself",
            ),
            (
                "[program.a]\ncommand=[\"x\"]\ndepends_on = { b = \"up\" }\n[program.b]\ncommand=[\"y\"]\n",
                "brood.toml:3:20: program 'a': depends_on b: unknown condition 'up'",
            ),
            (
                "[program.web]\ncommand=[\"x\"]\ndepends_on = { cache = \"started\" }\n[program.cache]\ncommand=[\"y\"]\ndepends_on = { web = \"ready\" }\n",
                "brood.toml:1:1: depends_on cycle: web -> cache -> web",
            ),
            (
                "[program.a]\ncommand=[\"x\"]\nshutdown_on = \"sometimes\"\n",
                "brood.toml:3:15: program 'a': unknown shutdown_on",
            ),
        ];
        for (text, want) in cases {
            let e = p(text).unwrap_err().message;
            assert!(e.starts_with(want), "{text:?}: got {e}");
        }
    }

    #[test]
    fn the_supervisor_table_is_read_and_checked() {
        let path = Path::new("brood.toml");
        let s = parse_supervisor(
            "[supervisor]\nstrategy = \"rest_for_one\"\nmax_restarts = 5\nrestart_window = \"10s\"\n",
            path,
        )
        .unwrap();
        assert_eq!(s.strategy, Strategy::RestForOne);
        assert_eq!(s.max_restarts, Some(5));
        assert_eq!(s.restart_window, Duration::from_secs(10));
        let none = parse_supervisor("[program.a]\ncommand=[\"x\"]\n", path).unwrap();
        assert_eq!(none.strategy, Strategy::OneForOne);
        assert_eq!(none.max_restarts, None);
        let e = parse_supervisor("[supervisor]\nstrategy = \"all\"\n", path)
            .unwrap_err()
            .message;
        assert!(e.starts_with("brood.toml:2:12: unknown strategy 'all'"), "{e}");
        let e = parse_supervisor("[supervisor]\nstratgy = \"x\"\n", path)
            .unwrap_err()
            .message;
        assert!(e.contains("unknown field `stratgy`"), "{e}");
    }

    #[test]
    fn reads_process_attributes_and_stdin() {
        let got = p(r#"
[program.web]
command = ["x"]
user = "www-data"
group = 33
umask = "0o027"
nice = -5
rlimits = { stack = 8388608, nofile = { soft = 10, hard = "infinity" } }
clear_env = true
stdin = "null"

[program.other]
command = ["y"]
"#)
        .unwrap();
        let a = &got[0].spec.attrs;
        assert_eq!(
            a.user.as_ref().map(|u| &u.value),
            Some(&IdValue::Name("www-data".into()))
        );
        assert_eq!(a.user.as_ref().map(|u| u.at.as_str()), Some("brood.toml:4:8"));
        assert_eq!(a.group.as_ref().map(|g| &g.value), Some(&IdValue::Id(33)));
        assert_eq!(a.umask, Some(0o27));
        assert_eq!(a.nice, Some(-5));
        let names: Vec<&str> = a
            .rlimits
            .iter()
            .map(|l| super::super::rlimit_name(l.resource))
            .collect();
        assert_eq!(names, ["nofile", "stack"], "in RLIMITS order");
        assert_eq!(a.rlimits[0].limit.hard, None);
        assert!(a.clear_env);
        assert_eq!(a.stdin, StdinMode::Null);
        assert_eq!(
            got[1].spec.attrs.stdin,
            StdinMode::Pipe,
            "run's default is a pipe"
        );
        assert!(got[1].spec.attrs.user.is_none() && !got[1].spec.attrs.clear_env);
    }

    #[test]
    fn unknown_key_is_named_with_its_position() {
        let e = p("[program.web]\ncommand = [\"x\"]\nrestat = \"always\"\n")
            .unwrap_err()
            .message;
        assert!(e.starts_with("brood.toml:3:1: unknown field `restat`"), "{e}");
    }

    #[test]
    fn bad_values_are_errors_with_positions() {
        let cases = [
            (
                "[program.a]\ncommand=[\"x\"]\nnumprocs = 0\n",
                "brood.toml:3:12: numprocs",
            ),
            (
                "[program.a]\ncommand=[\"x\"]\nstop_signal = \"NOPE\"\n",
                "brood.toml:3:15: unknown signal 'NOPE'",
            ),
            (
                "[program.a]\ncommand=[\"x\"]\nstop_timeout = \"-1s\"\n",
                "brood.toml:3:16: stop_timeout",
            ),
            (
                "[program.a]\ncommand=[\"x\"]\nstop_timeout = -1\n",
                "brood.toml:3:16: stop_timeout",
            ),
            (
                "[program.a]\ncommand=[\"x\"]\nrestart = \"sometimes\"\n",
                "brood.toml:3:11: unknown restart",
            ),
            ("[program.a]\nnumprocs = 1\n", "brood.toml:1:1: program 'a' needs"),
            (
                "[program.a]\ncommand=[]\n",
                "brood.toml:2:9: program 'a': command is empty",
            ),
            (
                "[program.a]\ncommand=[\"x\"]\n[program.a]\ncommand=[\"y\"]\n",
                "brood.toml:3:",
            ),
            ("", "brood.toml: no [program.NAME] tables"),
        ];
        for (text, want) in cases {
            let e = p(text).unwrap_err().message;
            assert!(e.starts_with(want), "{text:?}: got {e}");
        }
    }

    #[test]
    fn log_table_is_read_with_paths_relative_to_the_config() {
        let got = p(r#"
[program.web]
command = ["x"]
log = { file = "log/web.{n}.log", max_size = "50MiB", keep = 3, timestamps = true }

[program.worker]
command = ["y"]
log = { dir = "/var/log/app", max_size = 4096 }
"#)
        .unwrap();
        assert_eq!(
            got[0].log,
            Some(LogSpec {
                target: LogTarget::File("/srv/log/web.{n}.log".into()),
                max_size: 50 << 20,
                keep: 3,
                timestamps: true,
            })
        );
        assert_eq!(
            got[1].log,
            Some(LogSpec {
                target: LogTarget::Dir("/var/log/app".into()),
                max_size: 4096,
                keep: logspec::DEFAULT_KEEP,
                timestamps: false,
            })
        );
    }

    #[test]
    fn defaults_apply_to_every_program_and_a_programs_own_key_replaces_them_whole() {
        let got = p(r#"
[defaults]
log = { dir = "log", max_size = "1MiB", keep = 2, timestamps = true }
stop_timeout = "2s"
restart = "always"
env = { A = "1", B = "2" }
shell = "echo default"

[program.web]
command = ["web"]
log = { file = "web.log" }
env = { C = "3" }

[program.worker]
restart = "never"
"#)
        .unwrap();
        let (web, worker) = (&got[0], &got[1]);
        // The program's log table replaces the default's: nothing merged.
        assert_eq!(
            web.log,
            Some(LogSpec {
                target: LogTarget::File("/srv/web.log".into()),
                max_size: logspec::DEFAULT_MAX_SIZE,
                keep: logspec::DEFAULT_KEEP,
                timestamps: false,
            })
        );
        assert_eq!(web.spec.env, [("C".into(), "3".into())]);
        assert_eq!(web.spec.program, "web", "command replaces the default shell");
        assert_eq!(web.spec.stop_timeout, Duration::from_secs(2));
        assert_eq!(web.restart, RestartPolicy::Always);
        assert_eq!(
            worker.log,
            Some(LogSpec {
                target: LogTarget::Dir("/srv/log".into()),
                max_size: 1 << 20,
                keep: 2,
                timestamps: true,
            })
        );
        assert_eq!(worker.restart, RestartPolicy::Never);
        assert_eq!(worker.spec.args, ["-c", "echo default"]);
        assert_eq!(worker.spec.env.len(), 2);
    }

    #[test]
    fn errors_in_defaults_and_log_point_at_the_key() {
        let cases = [
            (
                "[defaults]\nrestat = 1\n[program.a]\ncommand=[\"x\"]\n",
                "brood.toml:2:1: unknown field `restat`",
            ),
            (
                "[defaults]\nstop_timeout = \"x\"\n[program.a]\ncommand=[\"x\"]\n",
                "brood.toml:2:16: stop_timeout",
            ),
            (
                "[program.a]\ncommand=[\"x\"]\nlog = { file = \"f\", dir = \"d\" }\n",
                "brood.toml:3:27: program 'a': log takes file or dir, not both",
            ),
            (
                "[program.a]\ncommand=[\"x\"]\nlog = { keep = 1 }\n",
                "brood.toml:3:7: program 'a': log needs file",
            ),
            (
                "[program.a]\ncommand=[\"x\"]\nlog = { dir = \"d\", max_size = \"10M\" }\n",
                "brood.toml:3:31: log.max_size: invalid size '10M': unknown unit 'M'",
            ),
            (
                "[program.a]\ncommand=[\"x\"]\nlog = { dir = \"d\", max_size = -1 }\n",
                "brood.toml:3:31: log.max_size",
            ),
            (
                "[program.a]\ncommand=[\"x\"]\nlog = { dir = \"d\", keep = -1 }\n",
                "brood.toml:3:27: log.keep must be between 0 and 1000",
            ),
            (
                "[program.a]\ncommand=[\"x\"]\nlog = { dir = \"\" }\n",
                "brood.toml:3:15: program 'a': log.dir is empty",
            ),
            (
                "[program.a]\ncommand=[\"x\"]\nlog = { dir = \"d\", size = 1 }\n",
                "brood.toml:3:20: unknown field `size`",
            ),
            (
                "[defaults]\ncommand = [\"x\"]\n",
                "brood.toml: no [program.NAME] tables",
            ),
        ];
        for (text, want) in cases {
            let e = p(text).unwrap_err().message;
            assert!(e.starts_with(want), "{text:?}: got {e}");
        }
    }
}

#[cfg(test)]
mod probe_tests {
    use super::*;
    use crate::core::instance::ReadyBy;
    use crate::probe::HttpTarget;

    fn p(text: &str) -> Result<Vec<RunProgram>, Error> {
        parse(text, Path::new("brood.toml"), Path::new("/srv"))
    }

    fn one(extra: &str) -> RunProgram {
        p(&format!("[program.a]\ncommand = [\"x\"]\n{extra}\n"))
            .unwrap()
            .remove(0)
    }

    fn error(extra: &str) -> String {
        p(&format!("[program.a]\ncommand = [\"x\"]\n{extra}\n"))
            .unwrap_err()
            .message
    }

    #[test]
    fn no_ready_or_health_by_default() {
        let a = one("");
        assert!(a.ready.is_none() && a.health.is_none());
    }

    #[test]
    fn ready_kinds_and_defaults() {
        let r = one("ready = { tcp = \"127.0.0.1:5432\", timeout = \"30s\" }")
            .ready
            .unwrap();
        assert_eq!(
            r.kind,
            ReadyKind::Probe(ProbeSpec::Tcp("127.0.0.1:5432".parse().unwrap()))
        );
        assert_eq!(r.timeout, Duration::from_secs(30));
        assert_eq!(r.interval, Duration::from_millis(250));

        let r = one("ready = { notify = true, watchdog = \"2s\" }").ready.unwrap();
        assert_eq!(
            r.kind,
            ReadyKind::Notify {
                watchdog: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(r.timeout, Duration::from_secs(60));

        let r = one("ready = { fd = 3, interval = \"1s\" }").ready.unwrap();
        assert_eq!(r.kind, ReadyKind::Fd(3));
        assert_eq!(r.interval, Duration::from_secs(1));

        let r = one("ready = { log = 'listening on \\d+' }").ready.unwrap();
        match r.kind {
            ReadyKind::Log(m) => assert!(m.is_match(b"web listening on 8000")),
            other => panic!("{other:?}"),
        }

        let r = one("ready = { http = \"http://localhost:8000/health\" }")
            .ready
            .unwrap();
        assert_eq!(
            r.kind,
            ReadyKind::Probe(ProbeSpec::Http(HttpTarget {
                addr: "127.0.0.1:8000".parse().unwrap(),
                host: "localhost:8000".into(),
                path: "/health".into(),
            }))
        );

        let r = one("ready = { exec = [\"pg_isready\", \"-q\"] }").ready.unwrap();
        assert_eq!(
            r.kind,
            ReadyKind::Probe(ProbeSpec::Exec(vec!["pg_isready".into(), "-q".into()]))
        );
        assert_eq!(r.kind.by(), ReadyBy::Exec);
    }

    #[test]
    fn health_kinds_and_defaults() {
        let h = one("health = { http = \"http://127.0.0.1:8000/\", interval = \"5s\", failures = 2 }")
            .health
            .unwrap();
        assert_eq!(h.probe.by(), ReadyBy::Http);
        assert_eq!(h.interval, Duration::from_secs(5));
        assert_eq!(h.timeout, Duration::from_secs(1));
        assert_eq!(h.failures, 2);
        let h = one("[program.a.health]\ntcp = \"[::1]:9\"\ntimeout = \"250ms\"")
            .health
            .unwrap();
        assert_eq!(h.probe, ProbeSpec::Tcp("[::1]:9".parse().unwrap()));
        assert_eq!(h.interval, Duration::from_secs(10));
        assert_eq!(h.timeout, Duration::from_millis(250));
        assert_eq!(h.failures, 3);
    }

    #[test]
    fn ready_errors_name_their_position() {
        let cases = [
            (
                "ready = { timeout = \"5s\" }",
                "brood.toml:3:9: program 'a': ready needs one of notify, fd, log",
            ),
            (
                "ready = { tcp = \"127.0.0.1:1\", http = \"http://127.0.0.1/\" }",
                "brood.toml:3:39: program 'a': ready takes one kind, not both tcp and http",
            ),
            (
                "ready = { notify = false }",
                "brood.toml:3:20: program 'a': ready.notify must be true",
            ),
            (
                "ready = { fd = 3, watchdog = \"1s\" }",
                "brood.toml:3:30: program 'a': ready.watchdog needs notify",
            ),
            (
                "ready = { fd = 2 }",
                "brood.toml:3:16: program 'a': ready.fd must be between 3 and 1023",
            ),
            (
                "ready = { fd = 1024 }",
                "brood.toml:3:16: program 'a': ready.fd must be between 3 and 1023",
            ),
            (
                "ready = { log = \"(\" }",
                "brood.toml:3:17: program 'a': ready.log: invalid regex: unclosed group",
            ),
            (
                "ready = { tcp = \"db:5432\" }",
                "brood.toml:3:17: program 'a': ready.tcp: 'db' is not an IP address",
            ),
            (
                "ready = { tcp = \"127.0.0.1\" }",
                "brood.toml:3:17: program 'a': ready.tcp: '127.0.0.1' needs a port",
            ),
            (
                "ready = { http = \"https://127.0.0.1/\" }",
                "brood.toml:3:18: program 'a': ready.http: https is not",
            ),
            (
                "ready = { exec = [] }",
                "brood.toml:3:18: program 'a': ready.exec is empty",
            ),
            (
                "ready = { notify = true, timeout = \"0s\" }",
                "brood.toml:3:36: ready.timeout must be more than 0",
            ),
            (
                "ready = { notify = true, interval = \"1ms\" }",
                "brood.toml:3:37: ready.interval must be at least 10ms",
            ),
            (
                "ready = { notify = true, watchdog = \"0\" }",
                "brood.toml:3:37: ready.watchdog must be at least 10ms",
            ),
            (
                "ready = { notify = true, timeout = \"soon\" }",
                "brood.toml:3:36: ready.timeout: invalid duration",
            ),
            ("ready = { notify = true, tcp = 1 }", "brood.toml:3:"),
            (
                "ready = { notify = true, port = 1 }",
                "brood.toml:3:26: unknown field `port`",
            ),
            ("ready = \"notify\"", "brood.toml:3:9:"),
        ];
        for (text, want) in cases {
            let e = error(text);
            assert!(e.starts_with(want), "{text}: got {e}");
            assert!(!e.contains('\n'), "{text}: {e}");
        }
    }

    #[test]
    fn health_errors_name_their_position() {
        let cases = [
            (
                "health = { interval = \"5s\" }",
                "brood.toml:3:10: program 'a': health needs one of tcp, http, exec",
            ),
            (
                "health = { notify = true }",
                "brood.toml:3:12: unknown field `notify`",
            ),
            ("health = { log = \"x\" }", "brood.toml:3:12: unknown field `log`"),
            (
                "health = { tcp = \"127.0.0.1:1\", failures = 0 }",
                "brood.toml:3:44: program 'a': health.failures",
            ),
            (
                "health = { tcp = \"127.0.0.1:1\", timeout = 0 }",
                "brood.toml:3:43: health.timeout must be more than 0",
            ),
            (
                "health = { tcp = \"127.0.0.1:1\", interval = \"0s\" }",
                "brood.toml:3:44: health.interval must be at least",
            ),
            (
                "health = { exec = [\"true\"], tcp = \"127.0.0.1:1\" }",
                "brood.toml:3:35: program 'a': health takes one kind, not both exec and tcp",
            ),
        ];
        for (text, want) in cases {
            let e = error(text);
            assert!(e.starts_with(want), "{text}: got {e}");
        }
    }
}
