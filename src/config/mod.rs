//! Validated settings: what to run, how to stop it, how to show its output.
//! The clap structs in `cli` hold raw input; this module turns them into
//! domain types or a clear error.

mod attrs;
mod dotenv;
mod logspec;
pub mod probe;
mod procfile;
mod toml_file;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::core::graph::{Condition, ShutdownOn, Strategy};
use crate::error::Error;

pub use attrs::{
    rlimit_name, Credentials, IdSpec, IdValue, Limit, ProcessAttrs, RlimitSpec, StdinMode, RLIMITS,
};
pub use dotenv::load_env_file;
pub use logspec::{parse_size, LogSpec, LogTarget};
pub use probe::{HealthSpec, ProbeSpec, ReadyKind, ReadySpec};

/// The longest duration brood accepts anywhere (a timeout, a backoff, a
/// window): a year. Longer is a typo, and deadlines far in the future only
/// invite overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parse `100ms`, `5s`, `1.5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration '{}' (use e.g. 500ms, 5s, 2m)", shown_text(text)))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "invalid duration '{}': unknown unit '{}' (use ms, s, m or h)",
                shown_text(text),
                shown_text(unit)
            ))
        }
    };
    duration_from_secs(value * scale).map_err(|why| format!("invalid duration '{}': {why}", shown_text(text)))
}

/// A number of seconds as a duration: finite, not negative, at most
/// [`MAX_DURATION`].
pub fn duration_from_secs(secs: f64) -> Result<Duration, String> {
    if secs.is_nan() || secs < 0.0 {
        return Err("must be 0 or more".to_string());
    }
    if secs > MAX_DURATION.as_secs_f64() {
        return Err("too large (at most a year, 8760h)".to_string());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A number as a person would write it in a message: `1e308`, never 309
/// digits.
pub fn shown_number(n: f64) -> String {
    if n.is_finite() && n.abs() < 1e15 {
        format!("{n}")
    } else {
        format!("{n:e}")
    }
}

/// Text from a config or the command line, cut short for a one-line message.
fn shown_text(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// How brood shows children's output.
#[derive(Clone, Debug)]
pub struct OutputOptions {
    pub inherit: bool,
    pub prefix: bool,
    pub timestamps: bool,
}

/// One program to run: argv and environment, and how to stop it.
#[derive(Clone, Debug)]
pub struct ProgramSpec {
    pub name: String,
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    pub stop_signal: i32,
    pub stop_timeout: Duration,
    /// Append the counter when no argument has `{n}` (spawn mode). `{n}`
    /// is substituted in every mode but init.
    pub counter_arg: bool,
    /// User, group, limits, environment base and stdin (SPEC 17).
    pub attrs: ProcessAttrs,
}

impl ProgramSpec {
    /// A program given on the command line (`spawn`, `init`): PROG and its
    /// arguments, no environment changes, stopped with SIGTERM.
    pub fn from_command(
        command: Vec<OsString>,
        stop_timeout: Duration,
        counter_arg: bool,
    ) -> Result<ProgramSpec, Error> {
        let mut command = command.into_iter();
        let program = command
            .next()
            .ok_or_else(|| Error::usage("no program given".into()))?;
        Ok(ProgramSpec {
            name: basename(&program),
            program,
            args: command.collect(),
            env: Vec::new(),
            cwd: None,
            stop_signal: libc::SIGTERM,
            stop_timeout,
            counter_arg,
            attrs: ProcessAttrs::default(),
        })
    }
}

/// When an instance is started again after it exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// systemd's name for the same policy.
    pub fn systemd(&self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "no",
        }
    }
}

/// One program of a `brood run` config, validated.
#[derive(Clone, Debug)]
pub struct RunProgram {
    pub spec: ProgramSpec,
    pub numprocs: u32,
    pub restart: RestartPolicy,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub max_restarts: u32,
    pub restart_window: Duration,
    /// The config named `cwd` (not just the config file's directory).
    pub cwd_explicit: bool,
    /// The program's own config env sets PORT: every instance keeps it.
    pub env_sets_port: bool,
    /// `depends_on`: each dependency's name and what to wait for, checked
    /// at load (known names, no cycle).
    pub depends_on: Vec<(String, Condition)>,
    /// `shutdown_on`: whether this program's end ends the run.
    pub shutdown_on: ShutdownOn,
    /// `log = {...}`: its instances' lines also go to files.
    pub log: Option<LogSpec>,
    /// `ready = {...}`: how an instance says it is ready (none: ready
    /// when started).
    pub ready: Option<ReadySpec>,
    /// `health = {...}`: probed once the instance is ready.
    pub health: Option<HealthSpec>,
}

/// `[supervisor]`: the restart strategy and the supervisor-wide budget.
#[derive(Clone, Debug, Default)]
pub struct SupervisorSpec {
    pub strategy: Strategy,
    /// Restarts of all programs together within `restart_window`; past it
    /// brood shuts down and exits 1. None: no supervisor-wide budget.
    pub max_restarts: Option<u32>,
    pub restart_window: Duration,
}

/// A loaded config file: its programs, in file order.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub programs: Vec<RunProgram>,
    /// The variables of the env files (already under each program's env).
    pub env: Vec<(OsString, OsString)>,
    /// `PORT` from the env files: the base port of the instances, as in
    /// foreman and honcho (4300 gives web.1 4300, web.2 4301, the next
    /// program 4400), not a port every instance shares.
    pub port_base: Option<u32>,
    pub supervisor: SupervisorSpec,
}

/// Defaults shared by both formats.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_RESTARTS: u32 = 10;
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Which file `brood run` reads: `-f FILE`, else `brood.toml`, else
/// `Procfile`, in the current directory (or `PROCFILE`, see
/// [`locate_config`]). A name that is there as a dangling symlink is chosen
/// too, so that reading it says what is wrong.
pub fn find_config(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    locate_config(explicit, &[])
}

/// Which file `brood run` reads: `-f FILE`; else `PROCFILE` from the env
/// files (`-e`, else `./.env`) or from brood's environment, as honcho does;
/// else `brood.toml`, else `Procfile`, in the current directory.
pub fn locate_config(explicit: Option<&Path>, env_files: &[PathBuf]) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = procfile_variable(env_files) {
        return Ok(p);
    }
    for name in ["brood.toml", "Procfile"] {
        let p = PathBuf::from(name);
        if std::fs::symlink_metadata(&p).is_ok() {
            return Ok(p);
        }
    }
    Err(Error::usage(
        "no brood.toml or Procfile in this directory (use -f FILE)".to_string(),
    ))
}

/// Most bytes brood reads from a config or env file.
pub const MAX_INPUT_FILE: u64 = 16 * 1024 * 1024;

/// Read a config or env file: a regular file (after following symlinks) of
/// at most [`MAX_INPUT_FILE`] bytes. `/dev/zero` would be read until memory
/// runs out, and a FIFO would block start-up forever.
pub fn read_input_file(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let fail = |why: String| Error::usage(format!("cannot read {what} '{}': {why}", path.display()));
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::fs::symlink_metadata(path).is_ok() => {
            let target = std::fs::read_link(path)
                .map(|t| format!(" (to '{}')", t.display()))
                .unwrap_or_default();
            return Err(fail(format!("it is a dangling symlink{target}")));
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    let not_regular = |t: std::fs::FileType| {
        let kind = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_char_device() {
            "a character device"
        } else if t.is_block_device() {
            "a block device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        fail(format!("{kind}, not a regular file"))
    };
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    // O_NONBLOCK: a FIFO swapped in after the check must not make open()
    // wait for a writer; on a regular file the flag changes nothing.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| fail(e.to_string()))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    let too_large = || fail(format!("larger than {} MiB", MAX_INPUT_FILE / (1024 * 1024)));
    if meta.len() > MAX_INPUT_FILE {
        return Err(too_large());
    }
    let mut text = Vec::new();
    file.take(MAX_INPUT_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| fail(e.to_string()))?;
    if text.len() as u64 > MAX_INPUT_FILE {
        return Err(too_large());
    }
    Ok(text)
}

/// `PROCFILE` from the env files, else from the environment. A file that
/// cannot be read here is skipped: it is read strictly when it is loaded.
fn procfile_variable(env_files: &[PathBuf]) -> Option<PathBuf> {
    let default = [PathBuf::from(".env")];
    let files = if env_files.is_empty() {
        &default[..]
    } else {
        env_files
    };
    let from_files = files
        .iter()
        .filter_map(|f| load_env_file(f).ok())
        .flatten()
        .filter(|(k, v)| k == "PROCFILE" && !v.is_empty())
        .map(|(_, v)| v)
        .next_back();
    from_files
        .or_else(|| std::env::var_os("PROCFILE").filter(|v| !v.is_empty()))
        .map(PathBuf::from)
}

/// The env files a config gets: `-e` files replace the default `.env`
/// beside a Procfile (foreman and honcho do the same); a brood.toml has no
/// default.
pub fn env_files_for(path: &Path, explicit: &[PathBuf]) -> Vec<PathBuf> {
    if !explicit.is_empty() {
        return explicit.to_vec();
    }
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    let dotenv = config_dir(path).join(".env");
    // symlink_metadata: a dangling .env is reported, not skipped.
    if !is_toml && std::fs::symlink_metadata(&dotenv).is_ok() {
        vec![dotenv]
    } else {
        Vec::new()
    }
}

/// Load and validate a config: TOML when the name ends in `.toml`, a
/// Procfile otherwise. The variables of the env files (`-e` files, else the
/// default, see [`env_files_for`]) are laid under each program's own env.
pub fn load_run_config(path: &Path, env_files: &[PathBuf]) -> Result<RunConfig, Error> {
    let text = read_input_file(path, "config")?;
    let text =
        String::from_utf8(text).map_err(|_| Error::usage(format!("{}: not valid UTF-8", path.display())))?;
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    let mut programs = parse_config_text(&text, path, is_toml)?;
    let supervisor = if is_toml {
        toml_file::parse_supervisor(&text, path)?
    } else {
        SupervisorSpec::default()
    };
    let env = load_env_files(&env_files_for(path, env_files))?;
    let port_base = port_of(&env)?;
    for p in &mut programs {
        // The program's own env wins over the files.
        let own = std::mem::take(&mut p.spec.env);
        p.env_sets_port = own.iter().any(|(k, _)| k == "PORT");
        p.spec.env = env.clone();
        p.spec.env.extend(own);
    }
    Ok(RunConfig {
        programs,
        env,
        port_base,
        supervisor,
    })
}

/// The variables of these files, in order (a later file wins).
pub fn load_env_files(files: &[PathBuf]) -> Result<Vec<(OsString, OsString)>, Error> {
    let mut env = Vec::new();
    for file in files {
        env.extend(load_env_file(file)?);
    }
    Ok(env)
}

/// `PORT` from env files: a port number, or a config error.
fn port_of(env: &[(OsString, OsString)]) -> Result<Option<u32>, Error> {
    let Some((_, value)) = env.iter().rev().find(|(k, _)| k == "PORT") else {
        return Ok(None);
    };
    value
        .to_str()
        .and_then(|v| v.trim().parse::<u16>().ok())
        .map(|p| Some(u32::from(p)))
        .ok_or_else(|| {
            Error::usage(format!(
                "PORT in an env file must be a port number, not '{}'",
                value.to_string_lossy()
            ))
        })
}

/// Apply `-c`/`--scale` values: `NAME=N` (N from 0, which leaves the
/// program out, to 10000) and `all=N` for every program (a named value wins
/// over `all`, wherever it is).
pub fn apply_scale(programs: &mut [RunProgram], specs: &[String], path: &Path) -> Result<(), Error> {
    let mut parsed = Vec::with_capacity(specs.len());
    for spec in specs {
        let parsed_one = spec
            .split_once('=')
            .and_then(|(n, c)| Some((n.trim(), c.trim().parse::<u32>().ok().filter(|c| *c <= 10_000)?)));
        match parsed_one {
            Some((name, count)) if !name.is_empty() => parsed.push((name, count)),
            _ => {
                return Err(Error::usage(format!(
                    "-c takes NAME=N with N from 0 to 10000, not '{spec}'"
                )))
            }
        }
    }
    for &(_, count) in parsed.iter().filter(|(n, _)| *n == "all") {
        for p in programs.iter_mut() {
            p.numprocs = count;
        }
    }
    for &(name, count) in parsed.iter().filter(|(n, _)| *n != "all") {
        match programs.iter_mut().find(|p| p.spec.name == name) {
            Some(p) => p.numprocs = count,
            None => {
                return Err(Error::usage(format!(
                    "-c: no program '{name}' in {}",
                    path.display()
                )))
            }
        }
    }
    Ok(())
}

/// The highest port an instance may be given.
const MAX_PORT: u64 = 65_535;

/// brood's own `$PORT` as the base port (5000 without one): a port number,
/// or a usage error (not a silent 5000).
pub fn port_from_environment(env_port: Option<&std::ffi::OsStr>) -> Result<u64, Error> {
    match env_port {
        None => Ok(5000),
        Some(p) => p
            .to_str()
            .and_then(|p| p.trim().parse::<u64>().ok())
            .filter(|p| *p <= MAX_PORT)
            .ok_or_else(|| {
                Error::usage(format!(
                    "PORT={} in the environment is not a port number (0 to 65535)",
                    shown_text(&p.to_string_lossy())
                ))
            }),
    }
}

/// foreman's `PORT` for each program that runs (numprocs > 0), None where
/// the config sets PORT itself: `base` + 100 per program by its place in the
/// file (`places`, so leaving a program out shifts no one); instance n gets
/// that + n - 1. A port past 65535 is an error, not a number the program
/// cannot bind.
pub fn port_bases(programs: &[RunProgram], places: &[String], base: u64) -> Result<Vec<Option<u32>>, Error> {
    let mut bases = Vec::with_capacity(programs.len());
    for p in programs.iter().filter(|p| p.numprocs > 0) {
        if p.env_sets_port {
            bases.push(None);
            continue;
        }
        let place = places.iter().position(|n| *n == p.spec.name).unwrap_or(0);
        let first = base + 100 * place as u64;
        let last = first + u64::from(p.numprocs.max(1)) - 1;
        if last > MAX_PORT {
            return Err(Error::usage(format!(
                "PORT for {}.{} would be {last}, above 65535 (base {base} + 100 per program + instance - 1): \
                 set PORT in the config or a lower base port",
                p.spec.name,
                p.numprocs.max(1)
            )));
        }
        bases.push(u32::try_from(first).ok());
    }
    Ok(bases)
}

/// `spawn --start K -n COUNT`: the counters K..K+COUNT-1, and the next one
/// the queue holds after them, must fit in a u64.
pub fn check_counter_range(start: u64, count: Option<u64>) -> Result<(), Error> {
    let Some(count) = count else {
        return Ok(());
    };
    match start.checked_add(count) {
        Some(_) => Ok(()),
        None => Err(Error::usage(format!(
            "--start {start} with -n {count} would count past {} (the largest counter)",
            u64::MAX
        ))),
    }
}

/// The directory a config file is in (`.` for a bare file name).
pub fn config_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Parse config text without touching the disk: TOML or a Procfile. The
/// entry point of the fuzz targets.
pub fn parse_config_text(text: &str, path: &Path, is_toml: bool) -> Result<Vec<RunProgram>, Error> {
    let dir = config_dir(path);
    // Editors on Windows start UTF-8 files with a BOM; it is not part of
    // the first name.
    let text = strip_bom(text);
    if is_toml {
        toml_file::parse(text, path, &dir)
    } else {
        procfile::parse(text, path, &dir)
    }
}

/// The text without a leading UTF-8 byte order mark.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Parse `.env` text (the fuzz targets' way in).
pub fn parse_env_text(text: &str) -> Result<Vec<(OsString, OsString)>, String> {
    dotenv::parse(text).map_err(|(line, msg)| format!("{line}: {msg}"))
}

/// `file:line:col: message` for a byte offset into `text`.
pub fn located(path: &Path, text: &str, offset: usize, message: &str) -> Error {
    let (line, col) = line_col(text, offset);
    Error::usage(format!("{}:{line}:{col}: {message}", path.display()))
}

pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let col = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    (line, col)
}

/// A program name usable in labels, unit names and the console.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The name a program shows in labels: its basename.
pub fn basename(program: &std::ffi::OsStr) -> String {
    let path = std::path::Path::new(program);
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn offsets_become_lines_and_columns() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    fn programs(names: &[&str]) -> Vec<RunProgram> {
        let text: String = names.iter().map(|n| format!("{n}: x\n")).collect();
        parse_config_text(&text, Path::new("Procfile"), false).unwrap()
    }

    fn counts(ps: &[RunProgram]) -> Vec<u32> {
        ps.iter().map(|p| p.numprocs).collect()
    }

    #[test]
    fn scale_values_name_programs_or_all() {
        let mut ps = programs(&["web", "worker", "clock"]);
        let specs = ["web=2".to_string(), "all=3".to_string(), "clock=0".to_string()];
        apply_scale(&mut ps, &specs, Path::new("Procfile")).unwrap();
        assert_eq!(counts(&ps), [2, 3, 0]);
        for bad in ["web", "web=-1", "web=10001", "=2", "web=x"] {
            let err = apply_scale(&mut ps, &[bad.to_string()], Path::new("Procfile")).unwrap_err();
            assert!(
                err.message.starts_with("-c takes NAME=N"),
                "{bad}: {}",
                err.message
            );
        }
        let err = apply_scale(&mut ps, &["nope=1".to_string()], Path::new("Procfile")).unwrap_err();
        assert_eq!(err.message, "-c: no program 'nope' in Procfile");
    }

    #[test]
    fn basename_of_paths() {
        assert_eq!(basename("./child-scripts/hello".as_ref()), "hello");
        assert_eq!(basename("true".as_ref()), "true");
    }
}
