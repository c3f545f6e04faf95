//! brood: parse, validate, run, map the outcome to an exit code.

mod children;
mod cli;
mod config;
mod console;
mod error;
mod events;
mod logging;
mod output;
mod reaper;
mod signals;
mod spawn;
mod supervisor;

use clap::Parser;

use cli::{Cli, Command, SpawnArgs};
use config::{OutputOptions, ProgramSpec};
use error::Error;
use events::Events;
use supervisor::{Options, Program, SpawnQueue, Supervisor};

fn main() {
    let cli = Cli::parse();
    logging::init(cli.verbose, cli.quiet);
    spawn::ensure_std_fds();
    let code = match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            logging::flush_to_stderr();
            eprintln!("brood: error: {e}");
            e.exit_code()
        }
    };
    logging::flush_to_stderr();
    std::process::exit(code);
}

fn run(command: Command) -> Result<i32, Error> {
    match command {
        Command::Spawn(args) => run_spawn(args),
    }
}

fn run_spawn(args: SpawnArgs) -> Result<i32, Error> {
    let mut command = args.command.into_iter();
    let program = command
        .next()
        .ok_or_else(|| Error::usage("no program given".into()))?;
    let name = config::basename(&program);
    let spec = ProgramSpec {
        name: name.clone(),
        program,
        args: command.collect(),
        env: Vec::new(),
        cwd: None,
        stop_signal: libc::SIGTERM,
        stop_timeout: args.grace,
        counter_arg: true,
    };
    let program = Program::new(spec)?;
    let events = match &args.output.events {
        Some(path) => Events::open(path)?,
        None => Events::none(),
    };
    let batch = args.count.is_some();
    let stdin_is_foreground_tty = output::is_terminal(0) && unsafe { libc::tcgetpgrp(0) == libc::getpgrp() };
    let console = !batch || args.interactive || stdin_is_foreground_tty;
    let opts = Options {
        output: OutputOptions {
            inherit: args.output.inherit,
            prefix: !args.output.no_prefix,
            timestamps: args.output.timestamps,
        },
        console,
        grace: args.grace,
        pdeathsig: !args.output.no_pdeathsig,
    };
    let queue = SpawnQueue {
        queued: args.count.unwrap_or(0),
        next_n: args.start,
        jobs: args.jobs.map(|j| j as usize),
        batch,
    };
    let width = supervisor::batch_width(&name, args.start, args.count);
    let outcome = Supervisor::new(vec![program], opts, queue, events, width)?.run();
    Ok(outcome.code)
}
