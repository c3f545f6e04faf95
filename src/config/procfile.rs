//! Procfiles, foreman's format: `name: command` per line, `#` comments.
//! A simple command runs as `/bin/sh -c 'exec COMMAND'` (`VAR=value exec
//! COMMAND` after leading assignments), so the program itself is the
//! process brood signals and reaps. A compound one (`a; b`,
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
                // A Procfile cannot set attributes; its children's stdin is
                // brood run's default, a pipe (write `cmd </dev/null` for
                // the old /dev/null).
                attrs: super::ProcessAttrs {
                    stdin: super::StdinMode::Pipe,
                    ..Default::default()
                },
            },
            numprocs: 1,
            restart: RestartPolicy::OnFailure,
            backoff_initial: super::DEFAULT_BACKOFF_INITIAL,
            backoff_max: super::DEFAULT_BACKOFF_MAX,
            max_restarts: super::DEFAULT_MAX_RESTARTS,
            restart_window: super::DEFAULT_RESTART_WINDOW,
            cwd_explicit: false,
            env_sets_port: false,
            depends_on: Vec::new(),
            shutdown_on: Default::default(),
            log: None,
            ready: None,
            health: None,
        });
    }
    if programs.is_empty() {
        return Err(Error::usage(format!("{}: no programs defined", path.display())));
    }
    Ok(programs)
}

/// `exec COMMAND` for a simple command, the command as it is otherwise.
///
/// `exec` goes where the shell grammar allows it: after leading variable
/// assignments (`VAR=value exec cmd`: the shell exports them to the command,
/// as foreman's and honcho's `sh -c` does), never before a word that is not a
/// program (`exec`, `cd`, `export`, a reserved word). When the line cannot be
/// read with certainty it goes to the shell as written: at worst the shell
/// stays between brood and the program, it never fails to start.
fn shell_line(command: &str) -> String {
    let compound = command.contains([';', '&', '|', '\n']) || command.starts_with(['(', '{', '!']);
    if compound {
        return command.to_string();
    }
    let Some(rest_at) = skip_assignments(command) else {
        return command.to_string();
    };
    let (assignments, rest) = command.split_at(rest_at);
    let first = rest.split_whitespace().next().unwrap_or("");
    if first.is_empty() || NOT_A_PROGRAM.contains(&first) || first.contains('=') {
        return command.to_string();
    }
    format!("{assignments}exec {rest}")
}

/// First words before which `exec` must not go: `exec` itself, reserved
/// words, and builtins that act on the shell rather than run a program.
const NOT_A_PROGRAM: &[&str] = &[
    "exec", "if", "for", "while", "until", "case", "then", "do", "time", "function", "select", "[[", "cd",
    "export", "readonly", "local", "set", "unset", "eval", ".", "source", "trap", "ulimit", "umask", "alias",
    "shift", "wait", "return", "exit", ":",
];

/// The offset just past the leading `NAME=value` words (0 when there are
/// none), or None when a value is quoted in a way this does not follow.
fn skip_assignments(command: &str) -> Option<usize> {
    let bytes = command.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        let name_len = bytes[i..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
            .count();
        let is_name = name_len > 0 && !bytes[i].is_ascii_digit();
        if !is_name || bytes.get(i + name_len) != Some(&b'=') {
            return Some(start);
        }
        i += name_len + 1;
        // The value: up to unquoted whitespace.
        while let Some(&b) = bytes.get(i) {
            match b {
                b' ' | b'\t' => break,
                b'\'' => i += 1 + bytes[i + 1..].iter().position(|&c| c == b'\'')? + 1,
                b'"' => {
                    i += 1;
                    loop {
                        match bytes.get(i)? {
                            b'"' => break,
                            b'\\' => i += 2,
                            b'$' if bytes.get(i + 1) == Some(&b'(') => return None,
                            _ => i += 1,
                        }
                    }
                    i += 1;
                }
                b'\\' => i += 2,
                b'$' if bytes.get(i + 1) == Some(&b'(') => return None,
                _ => i += 1,
            }
        }
        i = i.min(bytes.len());
        while bytes.get(i).is_some_and(|b| *b == b' ' || *b == b'\t') {
            i += 1;
        }
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
    fn exec_goes_after_leading_assignments() {
        assert_eq!(
            shell_line("REMAP_SIDEKIQ_QUEUE=1 bundle exec sidekiq"),
            "REMAP_SIDEKIQ_QUEUE=1 exec bundle exec sidekiq"
        );
        assert_eq!(
            shell_line("A='x y' B=\"$HOME z\" ./run"),
            "A='x y' B=\"$HOME z\" exec ./run"
        );
        assert_eq!(shell_line("A=1\\ 2  ./run"), "A=1\\ 2  exec ./run");
    }

    #[test]
    fn no_exec_where_the_shell_would_refuse_it() {
        assert_eq!(shell_line("exec ./web"), "exec ./web");
        assert_eq!(shell_line("A=1 exec ./web"), "A=1 exec ./web");
        assert_eq!(shell_line("A=1"), "A=1");
        assert_eq!(shell_line("cd web && ./run"), "cd web && ./run");
        assert_eq!(shell_line("export A=1"), "export A=1");
        assert_eq!(shell_line("A=\"$(date)\" ./run"), "A=\"$(date)\" ./run");
        assert_eq!(shell_line("A=\"open ./run"), "A=\"open ./run");
        assert_eq!(shell_line("A='open ./run"), "A='open ./run");
        assert_eq!(shell_line("if"), "if");
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
