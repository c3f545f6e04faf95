//! brood: parse, validate, run, map the outcome to an exit code.
#![deny(clippy::undocumented_unsafe_blocks)]

use clap::Parser;

use brood::core::ids::ProgramId;
use brood::core::policy::Jitter;
use brood::core::run::{start_order_of, ProgramEntry, RunCore};
use brood::error::Error;
use brood::events::Events;
use brood::logfile::LogFiles;
use brood::run_plan::{self, PlanArgs};
use brood::{check, cli, config, control, ctl, exec, export, init, logging, output, spawn, supervisor};
use cli::{Cli, Command, ExportTarget, InitArgs, OutputArgs, RunArgs, SpawnArgs};
use config::{OutputOptions, ProgramSpec};
use supervisor::{Driver, Options, Program, SpawnQueue, Supervisor};

/// Runs before Rust's runtime sets SIGPIPE to SIG_IGN, to record whether
/// brood's parent had ignored it: `brood init` passes that on to its command.
#[used]
#[link_section = ".init_array"]
static RECORD_INHERITED_SIGPIPE: extern "C" fn() = record_inherited_sigpipe;

extern "C" fn record_inherited_sigpipe() {
    brood::signals::record_inherited_sigpipe();
}

fn main() {
    let cli = Cli::parse();
    let (mut verbose, mut quiet) = (cli.verbose, cli.quiet);
    if let (Command::Init(_), 0, 0) = (&cli.command, verbose, quiet) {
        if let Some(level) = std::env::var("TINI_VERBOSITY")
            .ok()
            .as_deref()
            .and_then(tini_verbosity)
        {
            (verbose, quiet) = level;
        }
    }
    logging::init(verbose, quiet);
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
        Command::Run(args) => run_run(args),
        Command::Init(args) => run_init(args),
        Command::Exec(args) => exec::run(args),
        Command::Check(args) => check::run(args),
        Command::Ctl(args) => ctl::run(args),
        Command::Export(target) => run_export(target),
        Command::Completions { shell } => {
            let mut text = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "brood",
                &mut text,
            );
            print_generated(&text)
        }
        Command::Man => {
            let mut text = Vec::new();
            let man = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            man.render(&mut text)
                .map_err(|e| Error::io("cannot render the man page", e))?;
            print_generated(&text)
        }
    }
}

/// Write generated text to stdout; a reader that went away (`| head`) is
/// not an error.
fn print_generated(text: &[u8]) -> Result<i32, Error> {
    use std::io::Write;
    match std::io::stdout().write_all(text) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(Error::io("cannot write to stdout", e)),
    }
}

fn run_spawn(args: SpawnArgs) -> Result<i32, Error> {
    config::check_counter_range(args.start, args.count)?;
    let spec = ProgramSpec::from_command(args.command, args.grace, true)?;
    let name = spec.name.clone();
    let program = Program::new(spec)?;
    let events = Events::for_flag(args.output.events.as_deref())?;
    let batch = args.count.is_some();
    let console = !batch || args.interactive || stdin_is_foreground_tty();
    let opts = options(&args.output, console, args.grace);
    let queue = SpawnQueue {
        queued: args.count.unwrap_or(0),
        next_n: args.start,
        jobs: args.jobs.map(|j| j as usize),
        batch,
        starved: false,
        starve_warned: false,
        counter_spent: false,
    };
    let width = supervisor::batch_width(&name, args.start, args.count);
    let programs = vec![(ProgramId(0), program)];
    let outcome = Supervisor::new(programs, opts, Driver::Spawn(queue), events, width, None)?.run();
    Ok(outcome.code)
}

/// The console reads a terminal only when brood is in its foreground: a
/// background brood reading it would be stopped by SIGTTIN.
fn stdin_is_foreground_tty() -> bool {
    // SAFETY: tcgetpgrp and getpgrp take and return integers only.
    output::is_terminal(0) && unsafe { libc::tcgetpgrp(0) == libc::getpgrp() }
}

fn options(args: &OutputArgs, console: bool, grace: std::time::Duration) -> Options {
    Options {
        output: OutputOptions {
            inherit: args.inherit,
            prefix: !args.no_prefix,
            timestamps: args.timestamps,
        },
        console,
        grace,
        pdeathsig: (!args.no_pdeathsig).then_some(args.pdeathsig),
    }
}

fn run_run(args: RunArgs) -> Result<i32, Error> {
    let plan_args = PlanArgs {
        file: args.file.clone(),
        env_files: args.env_files.clone(),
        names: args.names.clone(),
        scale: args.scale.clone(),
        port: args.port,
        exit_with: args.exit_with.clone(),
        notify_socket: None,
    };
    let mut plan_args = plan_args;
    let mut plan = run_plan::plan(&plan_args)?;
    // sd_notify: the socket exists before the programs' environments are
    // made, so plan again with its path.
    let mut notify = None;
    if plan.wants_notify() {
        let dir = brood::probe::notify::runtime_dir()
            .map_err(|e| Error::io("no directory for the sd_notify socket", e))?;
        let (sock, path) = brood::probe::NotifySocket::bind(&dir)
            .map_err(|e| Error::io("cannot make the sd_notify socket", e))?;
        plan_args.notify_socket = Some(path);
        plan = run_plan::plan(&plan_args)?;
        notify = Some(sock);
    }
    let events = Events::for_flag(args.output.events.as_deref())?.with_ring();
    let (width, grace) = (plan.width(), plan.grace());
    let console = args.interactive || stdin_is_foreground_tty();
    let opts = options(&args.output, console, grace);
    let ids: Vec<ProgramId> = (0..plan.programs.len() as u32).map(ProgramId).collect();
    let control = control::socket::bind_for_run(&plan.path, args.socket.as_deref())?
        .map(|bound| supervisor::ControlServer::new(bound, ids.iter().copied()));
    let id_of = |name: &str| {
        plan.programs
            .iter()
            .position(|p| p.name == name)
            .map(|i| ProgramId(i as u32))
    };
    let mut entries = Vec::new();
    let mut fingerprints = Vec::new();
    let mut log_specs = Vec::new();
    for (id, p) in ids.iter().zip(&plan.programs) {
        if let Some(log) = &p.log {
            log_specs.push((*id, p.name.clone(), log.clone()));
        }
        let entry = ProgramEntry {
            name: p.name.clone(),
            policy: p.policy.clone(),
            deps: p.deps.iter().filter_map(|(d, c)| Some((id_of(d)?, *c))).collect(),
            shutdown_on: p.shutdown_on,
        };
        entries.push((*id, entry, u64::from(p.numprocs)));
        fingerprints.push((*id, p.fingerprint.clone(), p.numprocs));
    }
    let order = start_order_of(&entries)?;
    let run_plan::RunPlan { programs, rules, .. } = plan;
    let programs: Vec<(ProgramId, Program)> = ids
        .into_iter()
        .zip(programs.into_iter().map(|p| p.program))
        .collect();
    let driver = Driver::Run(Box::new(RunCore::new(entries, order, rules, Jitter::seeded())));
    let outcome = Supervisor::new(programs, opts, driver, events, width, control)?
        .with_notify(notify)
        .with_reload(plan_args, fingerprints)
        .with_log_files(LogFiles::new(log_specs))
        .run();
    Ok(outcome.code)
}

fn run_init(args: InitArgs) -> Result<i32, Error> {
    if args.version {
        println!("brood {}", env!("CARGO_PKG_VERSION"));
        return Ok(0);
    }
    if args.license {
        print!(
            "brood {} - {}\nLicensed under the {} license.\n",
            env!("CARGO_PKG_VERSION"),
            env!("CARGO_PKG_DESCRIPTION"),
            env!("CARGO_PKG_LICENSE")
        );
        return Ok(0);
    }
    let pdeathsig = match &args.pdeathsig {
        Some(text) => Some(
            brood::signals::parse(text)
                .ok_or_else(|| Error::usage(format!("-p: unknown signal '{text}'")))?,
        ),
        None => None,
    };
    // tini's variables count when set at all, whatever their value.
    let group = args.group || std::env::var_os("TINI_KILL_PROCESS_GROUP").is_some();
    let spec = ProgramSpec::from_command(args.command, args.leftover_grace, false)?;
    init::run(
        spec,
        init::InitOptions {
            group,
            leftover_grace: args.leftover_grace,
            pdeathsig,
            warn_on_reap: args.warn_on_reap,
            expect_codes: args.expect_codes,
        },
    )
}

/// brood's `-v`/`-q` counts for tini's TINI_VERBOSITY levels: 0 errors
/// only, 1 (tini's default) warnings, 2 info (brood's default), 3 debug,
/// 4 and more trace.
fn tini_verbosity(level: &str) -> Option<(u8, u8)> {
    Some(match level.trim().parse::<u32>().ok()? {
        0 => (0, 2),
        1 => (0, 1),
        2 => (0, 0),
        3 => (1, 0),
        _ => (2, 0),
    })
}

fn run_export(target: ExportTarget) -> Result<i32, Error> {
    match target {
        ExportTarget::Systemd {
            file,
            output,
            app,
            user,
            systemd_version,
        } => {
            let path = config::find_config(file.as_deref())?;
            let config = config::load_run_config(&path, &[])?;
            let opts = export::SystemdOptions {
                app: export::app_name(app.as_deref(), &path)?,
                user,
                systemd_version,
            };
            export::write_files(&output, &export::systemd_units(&config, &opts)?)?;
        }
        ExportTarget::Kubernetes {
            file,
            output,
            image,
            app,
        } => {
            let path = config::find_config(file.as_deref())?;
            let config = config::load_run_config(&path, &[])?;
            let app = export::app_name(app.as_deref(), &path)?;
            export::write_files(&output, &export::kubernetes_manifests(&config, &app, &image)?)?;
        }
    }
    Ok(0)
}
