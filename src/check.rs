//! `brood check`: load and validate a config as `brood run` would, and
//! list its programs (foreman's `check`). Nothing is started.

use std::io::Write;

use crate::cli::CheckArgs;
use crate::error::Error;
use crate::run_plan::{self, PlanArgs};

/// Print `NAME  N  COMMAND` per program and return 0; a config error is
/// returned as the usage error `brood run` would give.
pub fn run(args: CheckArgs) -> Result<i32, Error> {
    // Exactly what `brood run` checks before it starts anything.
    let plan = run_plan::plan(&PlanArgs {
        file: args.file,
        env_files: args.env_files,
        ..PlanArgs::default()
    })?;
    let path = plan.path.clone();
    let mut rows = Vec::with_capacity(plan.programs.len());
    for p in &plan.programs {
        let spec = &p.program.spec;
        let words: Vec<String> = std::iter::once(&spec.program)
            .chain(&spec.args)
            .map(|w| shell_quote(&w.to_string_lossy()))
            .collect();
        rows.push((spec.name.as_str(), p.numprocs, words.join(" ")));
    }
    let name_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let n_width = rows.iter().map(|r| r.1.to_string().len()).max().unwrap_or(0);
    let mut out = format!("{}: {} programs\n", path.display(), rows.len());
    for (name, n, command) in rows {
        out.push_str(&format!("{name:name_width$}  {n:>n_width$}  {command}\n"));
    }
    match std::io::stdout().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::io("cannot write to stdout", e)),
        _ => Ok(0),
    }
}

/// A word as a shell would need it: bare when it is plain, else quoted.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("/bin/sh"), "/bin/sh");
        assert_eq!(shell_quote("exec ./web $PORT"), "'exec ./web $PORT'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
