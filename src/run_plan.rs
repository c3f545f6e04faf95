//! From `brood run`'s arguments and config file to what the loop runs:
//! the programs (their images, as the spawn core needs them) and what the
//! run core needs of each (name, policy, dependencies, exit policy). Used
//! at start and again by `brood ctl reload`, which compares the new plan
//! with the running one program by program.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{self, ReadyKind, ReadySpec, RestartPolicy, RunConfig, RunProgram};
use crate::core::graph::{Condition, ShutdownOn};
use crate::core::policy::Policy;
use crate::core::run::Rules;
use crate::error::Error;
use crate::supervisor::{InstanceEnv, Program};

/// The arguments of `brood run` that decide what runs (kept for reload).
#[derive(Clone, Debug, Default)]
pub struct PlanArgs {
    pub file: Option<PathBuf>,
    pub env_files: Vec<PathBuf>,
    pub names: Vec<String>,
    pub scale: Vec<String>,
    pub port: Option<u16>,
    pub exit_with: Option<String>,
    /// The sd_notify socket every `ready = { notify = true }` program is
    /// given as NOTIFY_SOCKET (made by the loop when one needs it).
    pub notify_socket: Option<PathBuf>,
}

/// One program that runs (numprocs > 0).
pub struct Planned {
    pub name: String,
    pub program: Program,
    pub policy: Policy,
    pub deps: Vec<(String, Condition)>,
    pub shutdown_on: ShutdownOn,
    pub numprocs: u32,
    /// `log = {...}`: where its instances' lines go.
    pub log: Option<crate::config::LogSpec>,
    /// Every setting but numprocs, as text: equal fingerprints mean an
    /// unchanged program at reload.
    pub fingerprint: String,
}

pub struct RunPlan {
    pub path: PathBuf,
    /// In file order.
    pub programs: Vec<Planned>,
    pub rules: Rules,
}

impl RunPlan {
    /// The widest label the plan's instances will print.
    pub fn width(&self) -> usize {
        self.programs
            .iter()
            .map(|p| p.name.len() + 1 + p.numprocs.to_string().len())
            .max()
            .unwrap_or(0)
    }

    /// The longest stop timeout.
    /// Some program says it is ready over sd_notify.
    pub fn wants_notify(&self) -> bool {
        self.programs.iter().any(|p| {
            matches!(
                p.program.ready,
                Some(ReadySpec {
                    kind: ReadyKind::Notify { .. },
                    ..
                })
            )
        })
    }

    pub fn grace(&self) -> Duration {
        self.programs
            .iter()
            .map(|p| p.program.spec.stop_timeout)
            .max()
            .unwrap_or_default()
    }
}

fn unknown_program(name: &str, path: &std::path::Path, config: &RunConfig) -> Error {
    let known: Vec<&str> = config.programs.iter().map(|p| p.spec.name.as_str()).collect();
    Error::usage(format!(
        "no program '{name}' in {} (it has: {})",
        path.display(),
        known.join(", ")
    ))
}

/// Read and validate the config and lay the arguments over it.
pub fn plan(args: &PlanArgs) -> Result<RunPlan, Error> {
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
                p.restart = RestartPolicy::Never;
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
    // foreman's and honcho's convention: -p, else PORT from the env files,
    // else from the environment, else 5000, is the base; each program's
    // instances count up from base + 100 * its place in the file.
    let base = match (args.port, config.port_base) {
        (Some(p), _) => u64::from(p),
        (None, Some(p)) => u64::from(p),
        (None, None) => config::port_from_environment(std::env::var_os("PORT").as_deref())?,
    };
    let port_bases = config::port_bases(&config.programs, &places, base)?;
    let running: Vec<&RunProgram> = config.programs.iter().filter(|p| p.numprocs > 0).collect();
    let mut programs = Vec::with_capacity(running.len());
    for (p, port_base) in running.iter().zip(port_bases) {
        let mut shape = (*p).clone();
        shape.numprocs = 0;
        let mut spec = p.spec.clone();
        if let Some(ReadySpec {
            kind: ReadyKind::Notify { watchdog },
            ..
        }) = &p.ready
        {
            if let Some(path) = &args.notify_socket {
                spec.env
                    .push(("NOTIFY_SOCKET".into(), path.clone().into_os_string()));
            }
            if let Some(w) = watchdog {
                spec.env
                    .push(("WATCHDOG_USEC".into(), w.as_micros().to_string().into()));
            }
        }
        programs.push(Planned {
            name: p.spec.name.clone(),
            program: Program::new(spec)?
                .with_instance_env(InstanceEnv { port_base })
                .with_probes(p.ready.clone(), p.health.clone()),
            policy: Policy::of(p),
            // A dependency scaled to 0 is not there to wait for.
            deps: p
                .depends_on
                .iter()
                .filter(|(d, _)| running.iter().any(|r| &r.spec.name == d))
                .cloned()
                .collect(),
            shutdown_on: p.shutdown_on,
            numprocs: p.numprocs,
            log: p.log.clone(),
            fingerprint: format!("{shape:?} {port_base:?}"),
        });
    }
    let rules = Rules {
        strategy: config.supervisor.strategy,
        max_restarts: config.supervisor.max_restarts,
        window: config.supervisor.restart_window,
        exit_with_any,
    };
    Ok(RunPlan {
        path,
        programs,
        rules,
    })
}
