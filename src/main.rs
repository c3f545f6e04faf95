//! brood: parse, validate, run, map the outcome to an exit code.

use clap::Parser;

use brood::core::graph::{start_order, ShutdownOn};
use brood::core::ids::ProgramId;
use brood::core::policy::{Jitter, Policy};
use brood::core::run::{ProgramEntry, Rules, RunCore};
use brood::error::Error;
use brood::events::Events;
use brood::logfile::LogFiles;
use brood::{check, cli, config, control, ctl, exec, export, init, logging, output, spawn, supervisor};
use cli::{Cli, Command, ExportTarget, InitArgs, OutputArgs, RunArgs, SpawnArgs};
use config::{OutputOptions, ProgramSpec};
use supervisor::{Driver, InstanceEnv, Options, Program, SpawnQueue, Supervisor};

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
    };
    let width = supervisor::batch_width(&name, args.start, args.count);
    let programs = vec![(ProgramId(0), program)];
    let outcome = Supervisor::new(programs, opts, Driver::Spawn(queue), events, width, None)?.run();
    Ok(outcome.code)
}

/// The console reads a terminal only when brood is in its foreground: a
/// background brood reading it would be stopped by SIGTTIN.
fn stdin_is_foreground_tty() -> bool {
    output::is_terminal(0) && unsafe { libc::tcgetpgrp(0) == libc::getpgrp() }
}

fn options(args: &OutputArgs, console: bool, grace: std::time::Duration) -> Options {
    if !args.no_pdeathsig {
        spawn::choose_parent_death_signal(args.pdeathsig);
    }
    Options {
        output: OutputOptions {
            inherit: args.inherit,
            prefix: !args.no_prefix,
            timestamps: args.timestamps,
        },
        console,
        grace,
        pdeathsig: !args.no_pdeathsig,
    }
}

fn run_run(args: RunArgs) -> Result<i32, Error> {
    let path = config::locate_config(args.file.as_deref(), &args.env_files)?;
    let mut config = config::load_run_config(&path, &args.env_files)?;
    // Each program's place in the file sets its ports, whatever is selected.
    let places: Vec<String> = config.programs.iter().map(|p| p.spec.name.clone()).collect();
    if !args.names.is_empty() {
        for name in &args.names {
            if !config.programs.iter().any(|p| &p.spec.name == name) {
                return Err(unknown_program(name, &path, &config));
            }
        }
        // A program named brings its dependencies along (as `docker
        // compose up web` does): without them it would wait for ever.
        let mut wanted: Vec<String> = args.names.clone();
        let mut i = 0;
        while i < wanted.len() {
            if let Some(p) = config.programs.iter().find(|p| p.spec.name == wanted[i]) {
                for (dep, _) in &p.depends_on {
                    if !wanted.contains(dep) {
                        wanted.push(dep.clone());
                    }
                }
            }
            i += 1;
        }
        config.programs.retain(|p| wanted.contains(&p.spec.name));
    }
    let mut exit_with_any = false;
    match args.exit_with.as_deref() {
        None => {}
        Some("any") => exit_with_any = true,
        Some(name) => match config.programs.iter_mut().find(|p| p.spec.name == name) {
            // It runs once: its first end is the run's end (a failing test
            // restarted under a Procfile's on-failure would never end it).
            Some(p) => {
                p.shutdown_on = ShutdownOn::Exit;
                p.restart = config::RestartPolicy::Never;
            }
            None => return Err(unknown_program(name, &path, &config)),
        },
    }
    config::apply_scale(&mut config.programs, &args.scale, &path)?;
    if config.programs.iter().all(|p| p.numprocs == 0) {
        return Err(Error::usage(
            "nothing to run: every program is scaled to 0".to_string(),
        ));
    }
    let events = Events::for_flag(args.output.events.as_deref())?;
    let mut programs = Vec::new();
    let mut entries = Vec::new();
    let mut width = 0;
    let mut grace = std::time::Duration::ZERO;
    let mut log_specs = Vec::new();
    // foreman's and honcho's convention: -p, else PORT from the env files,
    // else from the environment, else 5000, is the base; each program's
    // instances count up from base + 100 * its place in the file.
    let base = match (args.port, config.port_base) {
        (Some(p), _) => u64::from(p),
        (None, Some(p)) => u64::from(p),
        (None, None) => config::port_from_environment(std::env::var_os("PORT").as_deref())?,
    };
    let port_bases = config::port_bases(&config.programs, &places, base)?;
    let running: Vec<&config::RunProgram> = config.programs.iter().filter(|p| p.numprocs > 0).collect();
    let id_of = |name: &str| {
        running
            .iter()
            .position(|p| p.spec.name == name)
            .map(|i| ProgramId(i as u32))
    };
    for (p, port_base) in running.iter().zip(port_bases) {
        let id = ProgramId(programs.len() as u32);
        width = width.max(p.spec.name.len() + 1 + p.numprocs.to_string().len());
        grace = grace.max(p.spec.stop_timeout);
        let entry = ProgramEntry {
            name: p.spec.name.clone(),
            policy: Policy::of(p),
            // A dependency scaled to 0 is not there to wait for.
            deps: p
                .depends_on
                .iter()
                .filter_map(|(d, c)| Some((id_of(d)?, *c)))
                .collect(),
            shutdown_on: p.shutdown_on,
        };
        entries.push((id, entry, u64::from(p.numprocs)));
        if let Some(log) = &p.log {
            log_specs.push((id, p.spec.name.clone(), log.clone()));
        }
        programs.push((
            id,
            Program::new(p.spec.clone())?.with_instance_env(InstanceEnv { port_base }),
        ));
    }
    let console = args.interactive || stdin_is_foreground_tty();
    let opts = options(&args.output, console, grace);
    let control = control::socket::bind_for_run(&path, args.socket.as_deref())?
        .map(|bound| supervisor::ControlServer::new(bound, programs.iter().map(|(id, _)| *id)));
    let names: Vec<String> = entries.iter().map(|(_, e, _)| e.name.clone()).collect();
    let deps: Vec<Vec<usize>> = entries
        .iter()
        .map(|(_, e, _)| e.deps.iter().map(|(d, _)| d.0 as usize).collect())
        .collect();
    let order = start_order(&names, &deps)
        .map_err(|cycle| Error::usage(format!("depends_on cycle: {}", cycle.join(" -> "))))?
        .into_iter()
        .map(|i| ProgramId(i as u32))
        .collect();
    let rules = Rules {
        strategy: config.supervisor.strategy,
        max_restarts: config.supervisor.max_restarts,
        window: config.supervisor.restart_window,
        exit_with_any,
    };
    let driver = Driver::Run(RunCore::new(entries, order, rules, Jitter::seeded()));
    let outcome = Supervisor::new(programs, opts, driver, events, width, control)?
        .with_log_files(LogFiles::new(log_specs))
        .run();
    Ok(outcome.code)
}

fn unknown_program(name: &str, path: &std::path::Path, config: &config::RunConfig) -> Error {
    let known: Vec<&str> = config.programs.iter().map(|p| p.spec.name.as_str()).collect();
    Error::usage(format!(
        "no program '{name}' in {} (it has: {})",
        path.display(),
        known.join(", ")
    ))
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
