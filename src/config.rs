//! Validated settings: what to run, how to stop it, how to show its output.
//! The clap structs in `cli` hold raw input; this module turns them into
//! domain types or a clear error.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Parse `100ms`, `5s`, `1.5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration '{text}' (use e.g. 500ms, 5s, 2m)"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "invalid duration '{text}': unknown unit '{unit}' (use ms, s, m or h)"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("invalid duration '{text}': too large"));
    }
    Ok(Duration::from_secs_f64(secs))
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
    /// Append or substitute the counter (spawn mode).
    pub counter_arg: bool,
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
    fn basename_of_paths() {
        assert_eq!(basename("./child-scripts/hello".as_ref()), "hello");
        assert_eq!(basename("true".as_ref()), "true");
    }
}
