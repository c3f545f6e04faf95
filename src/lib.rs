//! brood: a process supervisor built directly on fork/exec/waitpid.
//!
//! The binary (`main.rs`) parses the command line and calls into these
//! modules; they are a library so that the fuzz targets (`fuzz/`) can reach
//! the parsers directly.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod check;
pub mod children;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod core;
pub mod ctl;
pub mod error;
pub mod events;
pub mod exec;
pub mod export;
pub mod init;
pub mod logfile;
pub mod logging;
pub mod output;
pub mod probe;
pub mod reaper;
pub mod run_plan;
pub mod signals;
pub mod spawn;
pub mod supervisor;
