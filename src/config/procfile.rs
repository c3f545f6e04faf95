//! Procfiles, foreman's format: `name: command` per line, `#` comments.
//! A simple command runs as `/bin/sh -c 'exec COMMAND'`, so the program
//! itself is the process brood signals and reaps. A compound one (`a; b`,
//! `a && b`, a pipeline) runs as `/bin/sh -c 'COMMAND'`: with `exec` only its
//! first part would ever run. The shell leads the process group either way,
//! so a stop signal reaches every part.

use std::collections::HashSet;
use std::path::Path;

use super::{located, valid_name, ProgramSpec, RestartPolicy, RunProgram};
use crate::error::Error;

pub fn parse(text: &str, path: &Path, dir: &Path) -> Result<Vec<RunProgram>, Error> {
    let mut programs: Vec<RunProgram> = Vec::new();
    let mut names: HashSet<&str> = HashSet::new();
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
            return Err(located(
                path,
                text,
                line_start + indent,
                "expected 'name: command'",
            ));
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
            return Err(located(
                path,
                text,
                col,
                &format!("program '{name}' has no command"),
            ));
        }
        // The name is valid, so a NUL on this line is in the command.
        if let Some(nul) = line.find('\0') {
            return Err(located(
                path,
                text,
                line_start + nul,
                &format!("program '{name}': command contains a NUL byte"),
            ));
        }
        if !names.insert(name) {
            return Err(located(
                path,
                text,
                line_start + indent,
                &format!("duplicate program name '{name}'"),
            ));
        }
        programs.push(RunProgram {
            spec: ProgramSpec {
                name: name.to_string(),
                program: "/bin/sh".into(),
                args: vec!["-c".into(), shell_line(command).into()],
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
            cwd_explicit: false,
        });
    }
    if programs.is_empty() {
        return Err(Error::usage(format!("{}: no programs defined", path.display())));
    }
    Ok(programs)
}

/// `exec COMMAND` for a simple command, the command as it is otherwise.
fn shell_line(command: &str) -> String {
    let compound = command.contains([';', '&', '|', '\n'])
        || command.starts_with(['(', '{', '!'])
        || ["if", "for", "while", "until", "case"]
            .iter()
            .any(|k| command.split_whitespace().next() == Some(k));
    if compound {
        command.to_string()
    } else {
        format!("exec {command}")
    }
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
    fn simple_commands_are_execed_and_compound_ones_are_not() {
        assert_eq!(shell_line("./web --port $PORT"), "exec ./web --port $PORT");
        assert_eq!(shell_line("echo a; sleep 1"), "echo a; sleep 1");
        assert_eq!(shell_line("a && b"), "a && b");
        assert_eq!(shell_line("yes | head"), "yes | head");
        assert_eq!(shell_line("while true; do x; done"), "while true; do x; done");
    }

    #[test]
    fn errors_carry_line_and_column() {
        assert_eq!(
            p("web: x\n  nocolon\n").unwrap_err().message,
            "Procfile:2:3: expected 'name: command'"
        );
        assert!(p("web: x\nweb: y\n")
            .unwrap_err()
            .message
            .starts_with("Procfile:2:1: duplicate"));
        assert!(p("we b: x\n")
            .unwrap_err()
            .message
            .contains("invalid program name"));
        assert!(p("web:\n").unwrap_err().message.contains("no command"));
        assert!(p("# only comments\n").is_err());
    }
}
