//! Procfiles, foreman's format: `name: command` per line, `#` comments.
//! Each command runs as `/bin/sh -c 'exec COMMAND'`.

use std::path::Path;

use super::{located, valid_name, ProgramSpec, RestartPolicy, RunProgram};
use crate::error::Error;

pub fn parse(text: &str, path: &Path, dir: &Path) -> Result<Vec<RunProgram>, Error> {
    let mut programs: Vec<RunProgram> = Vec::new();
    let mut offset = 0;
    for raw in text.split_inclusive('\n') {
        let line_start = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let Some((name, command)) = trimmed.split_once(':') else {
            return Err(located(path, text, line_start + indent, "expected 'name: command'"));
        };
        let name = name.trim_end();
        if !valid_name(name) {
            return Err(located(
                path,
                text,
                line_start + indent,
                &format!("invalid program name '{name}' (letters, digits, '-' and '_')"),
            ));
        }
        let command = command.trim();
        if command.is_empty() {
            let col = line_start + indent + name.len() + 1;
            return Err(located(path, text, col, &format!("program '{name}' has no command")));
        }
        if programs.iter().any(|p| p.spec.name == name) {
            return Err(located(path, text, line_start + indent, &format!("duplicate program name '{name}'")));
        }
        programs.push(RunProgram {
            spec: ProgramSpec {
                name: name.to_string(),
                program: "/bin/sh".into(),
                args: vec!["-c".into(), format!("exec {command}").into()],
                env: Vec::new(),
                cwd: Some(dir.to_path_buf()),
                stop_signal: libc::SIGTERM,
                stop_timeout: super::DEFAULT_STOP_TIMEOUT,
                counter_arg: false,
            },
            numprocs: 1,
            restart: RestartPolicy::OnFailure,
            backoff_initial: super::DEFAULT_BACKOFF_INITIAL,
            backoff_max: super::DEFAULT_BACKOFF_MAX,
            max_restarts: super::DEFAULT_MAX_RESTARTS,
            restart_window: super::DEFAULT_RESTART_WINDOW,
        });
    }
    if programs.is_empty() {
        return Err(Error::usage(format!("{}: no programs defined", path.display())));
    }
    Ok(programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Vec<RunProgram>, Error> {
        parse(text, Path::new("Procfile"), Path::new("."))
    }

    #[test]
    fn reads_names_and_commands() {
        let got = p("# c\nweb: python3 -m http.server $PORT\n\nworker:  ./work --fast\n").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].spec.name, "web");
        assert_eq!(got[1].spec.args[1], "exec ./work --fast");
    }

    #[test]
    fn errors_carry_line_and_column() {
        assert_eq!(p("web: x\n  nocolon\n").unwrap_err().message, "Procfile:2:3: expected 'name: command'");
        assert!(p("web: x\nweb: y\n").unwrap_err().message.starts_with("Procfile:2:1: duplicate"));
        assert!(p("we b: x\n").unwrap_err().message.contains("invalid program name"));
        assert!(p("web:\n").unwrap_err().message.contains("no command"));
        assert!(p("# only comments\n").is_err());
    }
}
