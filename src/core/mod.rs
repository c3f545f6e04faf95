//! The run core as data: what brood wants of each instance, what it has
//! seen of it, and what it must do next. Nothing here makes a syscall or
//! reads the clock: time comes in as an input, actions go out as values,
//! and the event loop (`supervisor`) executes them. Every transition can
//! be tested without a process.
//!
//! - `ids`: program, instance and child ids, never reused.
//! - `instance`: one instance's goal and phase, and its transition function.
//! - `run`: every instance of a `brood run`, and the requests that touch many.
//! - `policy`: restart decisions (backoff, budgets) as pure functions.
//! - `timers`: every deadline in one time-ordered queue.
//! - `graph`: dependency conditions, start order, strategies.
//! - `event`: the one vocabulary of events (`--events`, later the ctl stream).
//! - `status`: the snapshot rendered as the console table, ctl text and JSON.

pub mod event;
pub mod graph;
pub mod ids;
pub mod instance;
pub mod policy;
pub mod run;
pub mod status;
pub mod timers;
