//! `brood exec`: one command with the app's environment (foreman's `run`).
//!
//! brood builds the environment (the env files, and a program's own config
//! env when the command is a program's name), then execs the command in its
//! own process instead of forking: the command keeps brood's pid, terminal,
//! process group and signal state, nothing sits between it and its parent,
//! and its exit status is its parent's to see as it is (a shell reports a
//! death by signal N as 128+N). A forking wrapper would have to forward
//! signals without doubling the terminal's ^C, and hand job control back
//! and forth; exec needs none of that, and it is what foreman's `run`
//! did.

use std::path::PathBuf;

use crate::cli::ExecArgs;
use crate::config::{self, ProgramSpec};
use crate::error::Error;
use crate::logging;
use crate::spawn::{self, plan};

/// Exec the command; returns only when that failed, with the shell's code
/// (127 not found, 126 found but not runnable).
pub fn run(args: ExecArgs) -> Result<i32, Error> {
    let spec = command_spec(args)?;
    let image = plan::Image::new(&spec.program, &spec.env, spec.cwd.as_deref())?;
    let argv = plan::build_argv(&spec.program, &spec.args, None, false)?;
    logging::flush_to_stderr();
    let err = spawn::replace_process(&image, &argv);
    log::error!("{}", err.describe(&image));
    Ok(if err.errno() == nix::errno::Errno::ENOENT {
        127
    } else {
        126
    })
}

/// What to run and with which variables. The config is optional (as for
/// foreman): without one, only the env files count. A lone word that names
/// a program of the config runs that program's command, in its directory,
/// with its env.
fn command_spec(args: ExecArgs) -> Result<ProgramSpec, Error> {
    let path = match config::locate_config(args.file.as_deref(), &args.env_files) {
        Ok(path) => Some(path),
        Err(_) if args.file.is_none() => None,
        Err(e) => return Err(e),
    };
    let env = match &path {
        Some(path) => {
            let config = config::load_run_config(path, &args.env_files)?;
            if let [word] = args.command.as_slice() {
                if let Some(p) = config.programs.iter().find(|p| p.spec.name.as_str() == word) {
                    return Ok(p.spec.clone());
                }
            }
            config.env
        }
        None => {
            let files: Vec<PathBuf> = if args.env_files.is_empty() {
                Some(PathBuf::from(".env"))
                    .filter(|p| p.exists())
                    .into_iter()
                    .collect()
            } else {
                args.env_files.clone()
            };
            config::load_env_files(&files)?
        }
    };
    let mut spec = ProgramSpec::from_command(args.command, config::DEFAULT_STOP_TIMEOUT, false)?;
    spec.env = env;
    Ok(spec)
}
