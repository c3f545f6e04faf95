//! Command-line definitions. These structs hold raw input only; `main`
//! turns them into validated settings from `config`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::config::parse_duration;

#[derive(Parser, Debug)]
#[command(
    name = "brood",
    version,
    about = "A process supervisor built directly on fork/exec/waitpid"
)]
pub struct Cli {
    /// More messages on stderr (-vv for trace).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Fewer messages on stderr (-qq for errors only).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub quiet: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fork and exec PROG once per request, with a counter argument.
    Spawn(SpawnArgs),
    /// Supervise the programs of a brood.toml or Procfile.
    Run(RunArgs),
    /// PID 1 / subreaper for containers: run CMD, forward signals, reap orphans.
    Init(InitArgs),
    /// Run one command with the app's environment (foreman's `run`).
    Exec(ExecArgs),
    /// Validate the config and list its programs (foreman's `check`).
    Check(CheckArgs),
    /// Control a running `brood run` over its socket.
    Ctl(CtlArgs),
    /// Write systemd units or Kubernetes manifests for a config.
    #[command(subcommand)]
    Export(ExportTarget),
    /// Print a shell completion script (generated from these definitions).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff, generated from these definitions).
    Man,
}

#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Leave children on brood's own stdout/stderr (no capture, no prefix).
    #[arg(long)]
    pub inherit: bool,
    /// Write children's lines without the `LABEL | ` prefix.
    #[arg(long)]
    pub no_prefix: bool,
    /// Put the time before every line.
    #[arg(long)]
    pub timestamps: bool,
    /// Append one JSON object per event to PATH.
    #[arg(long, value_name = "PATH")]
    pub events: Option<PathBuf>,
    /// The signal each child gets when brood dies without its own shutdown
    /// (SIGKILL, a crash): KILL, TERM, 9, ...
    #[arg(long, value_name = "SIG", default_value = "KILL", value_parser = crate::signals::parse_arg)]
    pub pdeathsig: libc::c_int,
    /// Do not give children a parent-death signal.
    #[arg(long, conflicts_with = "pdeathsig")]
    pub no_pdeathsig: bool,
}

#[derive(Args, Debug)]
pub struct SpawnArgs {
    /// Spawn COUNT children, wait for all, exit (batch mode).
    #[arg(short = 'n', long = "count", value_name = "COUNT")]
    pub count: Option<u64>,
    /// At most JOBS children alive at once.
    #[arg(short = 'j', long, value_name = "JOBS", value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: Option<u64>,
    /// First counter value.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub start: u64,
    /// Read console commands from stdin even in batch mode.
    #[arg(short, long)]
    pub interactive: bool,
    /// Time between the stop signal and SIGKILL at shutdown.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,
    #[command(flatten)]
    pub output: OutputArgs,
    /// The program and its arguments; the counter is appended, or replaces `{n}`.
    #[arg(required = true, trailing_var_arg = true, value_name = "PROG [ARGS]...")]
    pub command: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Config file (default: brood.toml, else Procfile, in this directory).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Load environment variables from FILE instead of the Procfile's .env
    /// (may repeat, or list: `-e a.env,b.env`; a later file wins).
    #[arg(short = 'e', long = "env", value_name = "FILE", value_delimiter = ',')]
    pub env_files: Vec<PathBuf>,
    /// Base port: web.1 gets PORT, web.2 PORT+1, the next program PORT+100
    /// (default: PORT from the env files, else from the environment, else 5000).
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub port: Option<u16>,
    /// Read console commands from stdin even when it is not a terminal.
    #[arg(short, long)]
    pub interactive: bool,
    /// Control socket (default: .brood.sock beside the config file).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Instances of a program, over the config's numprocs (foreman's -m,
    /// honcho's -c): `-c web=2,worker=3` or repeated; `web=0` leaves web
    /// out, `all=2` sets every program (a named value wins over all).
    #[arg(short = 'c', long = "scale", value_name = "NAME=N", value_delimiter = ',')]
    pub scale: Vec<String>,
    /// End the run when NAME ends (it runs once, `shutdown_on = "exit"`)
    /// and exit with its status; `any`: when any process exits, as foreman
    /// and honcho do.
    #[arg(long = "exit-with", value_name = "NAME|any")]
    pub exit_with: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Start only these programs (default: all).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Config file (default: as `brood run` finds it; none is fine).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Load environment variables from FILE instead of the Procfile's .env
    /// (may repeat, or list: `-e a.env,b.env`).
    #[arg(short = 'e', long = "env", value_name = "FILE", value_delimiter = ',')]
    pub env_files: Vec<PathBuf>,
    /// The command and its arguments, or the name of a program of the config.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD [ARGS]...")]
    pub command: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Config file (default: as `brood run` finds it).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Env files instead of the Procfile's .env (checked too).
    #[arg(short = 'e', long = "env", value_name = "FILE", value_delimiter = ',')]
    pub env_files: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Forward signals to CMD's whole process group, not only to CMD
    /// (also when TINI_KILL_PROCESS_GROUP is set).
    #[arg(short = 'g', long = "group")]
    pub group: bool,
    /// After CMD exits: time between SIGTERM and SIGKILL for what it left
    /// behind (`--grace` is the older name).
    #[arg(long = "leftover-grace", alias = "grace", value_name = "DUR", default_value = "1s", value_parser = parse_duration)]
    pub leftover_grace: Duration,
    /// Accepted for tini's sake; brood is always a subreaper when not PID 1.
    #[arg(short = 's', long = "subreaper")]
    pub subreaper: bool,
    /// Signal brood gets when its parent dies (tini's -p), e.g. SIGKILL or TERM.
    #[arg(short = 'p', long = "pdeathsig", value_name = "SIG")]
    pub pdeathsig: Option<String>,
    /// Warn on every zombie brood reaps (other than CMD).
    #[arg(short = 'w', long = "warn-on-reap")]
    pub warn_on_reap: bool,
    /// Exit 0 when CMD's code (or 128+signal) is CODE; may repeat.
    #[arg(short = 'e', long = "expect-code", value_name = "CODE", value_parser = clap::value_parser!(u8))]
    pub expect_codes: Vec<u8>,
    /// Print brood's license and version, then exit.
    #[arg(short = 'l', long = "license")]
    pub license: bool,
    /// Print brood's version, then exit (as `tini --version`).
    #[arg(long = "version")]
    pub version: bool,
    /// The command and its arguments.
    #[arg(
        required_unless_present_any = ["license", "version"],
        trailing_var_arg = true,
        value_name = "CMD [ARGS]..."
    )]
    pub command: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The socket (default: .brood.sock beside the config file).
    #[arg(long, value_name = "PATH", conflicts_with = "file")]
    pub socket: Option<PathBuf>,
    /// The config file whose brood to talk to.
    #[arg(short = 'f', long = "file", value_name = "CONFIG")]
    pub file: Option<PathBuf>,
    /// Give up (exit 3) when brood does not accept or answer within DUR;
    /// `logs -f` waits this long for its first answer only.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub verb: CtlVerb,
}

#[derive(Subcommand, Debug)]
pub enum CtlVerb {
    /// Label, pid, state, uptime, restarts, last exit of every instance.
    Status {
        /// {"programs": [...]} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a program (all instances) or one instance that is down.
    Start { target: String },
    /// Stop a program or instance; it stays down until start or restart.
    Stop { target: String },
    /// Stop and start again.
    Restart { target: String },
    /// Send a signal to the process groups of a program or instance.
    Signal {
        /// TERM, SIGHUP, 9, ...
        signal: String,
        target: String,
    },
    /// Change the number of instances: NAME=N.
    Scale {
        #[arg(value_name = "NAME=N")]
        spec: String,
    },
    /// Recent output of a program or instance, then follow with -f.
    Logs {
        /// How many recent lines.
        #[arg(short = 'n', long = "lines", default_value_t = 100)]
        lines: usize,
        /// Keep printing new lines.
        #[arg(short = 'f', long = "follow")]
        follow: bool,
        target: String,
    },
    /// The event stream: recent events (the same JSON objects as --events,
    /// each with its `seq`), then live ones with -f.
    Events {
        /// Keep printing new events.
        #[arg(short = 'f', long = "follow")]
        follow: bool,
        /// Only events with this sequence number or later.
        #[arg(long = "since", value_name = "SEQ")]
        since: Option<u64>,
    },
    /// Re-read the config: unchanged programs keep running, changed ones
    /// restart, new ones start, removed ones stop.
    Reload,
    /// Shut brood down, as `q` at its console.
    Shutdown,
    /// Close and reopen every log file (after logrotate moved them away).
    Reopen,
    /// Connect this terminal to an instance's terminal (tty = true), in
    /// raw mode, until Ctrl-] detaches; the instance keeps running.
    Attach {
        /// The instance's label, such as web.1.
        target: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ExportTarget {
    /// APP.target and one template unit APP-PROG@.service per program.
    Systemd {
        /// Config file (default: brood.toml, else Procfile).
        #[arg(short = 'f', long = "file", value_name = "CONFIG")]
        file: Option<PathBuf>,
        /// Where to write the units.
        #[arg(short = 'o', long = "output", value_name = "DIR")]
        output: PathBuf,
        /// Name of the target and unit prefix (default: the config's directory name).
        #[arg(long)]
        app: Option<String>,
        /// User= for every unit.
        #[arg(long)]
        user: Option<String>,
        /// The systemd the units are for; 254+ adds RestartSteps=/RestartMaxDelaySec=.
        #[arg(long, value_name = "N", default_value_t = 252)]
        systemd_version: u32,
    },
    /// One Deployment per program, with brood init as the entrypoint.
    Kubernetes {
        #[arg(short = 'f', long = "file", value_name = "CONFIG")]
        file: Option<PathBuf>,
        #[arg(short = 'o', long = "output", value_name = "DIR")]
        output: PathBuf,
        /// The container image (it must contain brood and the programs).
        #[arg(long)]
        image: String,
        #[arg(long)]
        app: Option<String>,
    },
}
