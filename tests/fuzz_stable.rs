//! A stable-Rust mutation fuzzer over the text loaders (the same targets as
//! `fuzz/`, for machines without nightly). `make test` runs a few thousand
//! mutations per target; `make fuzz` runs it for FUZZ_SECONDS per target.
//! Any panic fails the test and prints the input that caused it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TOKENS: &[&str] = &[
    "[program.",
    "]",
    "=",
    "\"",
    "'",
    "{",
    "}",
    "[",
    ",",
    ":",
    "\n",
    "#",
    "\\",
    "command",
    "shell",
    "numprocs",
    "restart",
    "backoff",
    "initial",
    "max",
    "max_restarts",
    "restart_window",
    "stop_signal",
    "stop_timeout",
    "cwd",
    "env",
    "-1",
    "0",
    "99999999999999999999",
    "1e309",
    "\"5s\"",
    "\"-1s\"",
    "ms",
    "export ",
    "\u{0}",
    "\u{fffd}",
    "\r",
    "k ",
    "r ",
    "l",
    "q",
    "s",
    "🦀",
    "1.5",
    "true",
    "[[program]]",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            2 if len > 0 => {
                let a = rng.below(len);
                let b = (a + rng.below(16)).min(len);
                input.drain(a..b);
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + rng.below(32)).min(len);
                let piece = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, piece);
            }
            _ => {
                let tok = TOKENS[rng.below(TOKENS.len())].as_bytes();
                let at = rng.below(len + 1);
                input.splice(at..at, tok.iter().copied());
            }
        }
    }
    input.truncate(64 * 1024);
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().filter_map(|e| std::fs::read(e.path()).ok()).collect())
        .unwrap_or_default();
    out.push(Vec::new());
    out
}

fn run_target(target: &str, check: &dyn Fn(&[u8])) {
    let budget = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let deadline = budget.map(|s| Instant::now() + Duration::from_secs(s));
    let iterations = if budget.is_some() { u64::MAX } else { 3000 };
    let corpus = seeds(target);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
    let mut done = 0u64;
    while done < iterations && deadline.is_none_or(|d| Instant::now() < d) {
        let mut input = corpus[rng.below(corpus.len())].clone();
        mutate(&mut rng, &mut input);
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            panic!(
                "{target}: the loader panicked on input {:?}",
                String::from_utf8_lossy(&input)
            );
        }
        done += 1;
    }
    if budget.is_some() {
        eprintln!("fuzz {target}: {done} inputs, no panic");
    }
}

fn procfile(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = brood::config::parse_config_text(text, Path::new("Procfile"), false);
    }
}

fn toml_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = brood::config::parse_config_text(text, Path::new("brood.toml"), true);
    }
}

fn dotenv(data: &[u8]) {
    let _ = brood::config::parse_env_text(&String::from_utf8_lossy(data));
}

fn console(data: &[u8]) {
    let mut reader = brood::console::LineReader::default();
    let mut out = Vec::new();
    for chunk in data.chunks(7) {
        reader.feed(chunk, &mut out);
    }
    reader.finish(&mut out);
}

#[test]
fn fuzz_procfile_loader_never_panics() {
    run_target("procfile", &procfile);
}

#[test]
fn fuzz_toml_loader_never_panics() {
    run_target("toml_config", &toml_config);
}

#[test]
fn fuzz_dotenv_loader_never_panics() {
    run_target("dotenv", &dotenv);
}

#[test]
fn fuzz_console_reader_never_panics() {
    run_target("console", &console);
}

/// Inputs that once broke a loader, kept forever.
#[test]
fn regressions() {
    let cases: &[(&str, &str)] = &[
        (
            "toml_config",
            "[program.a]\ncommand=[\"x\"]\nstop_timeout = 1e309\n",
        ),
        (
            "toml_config",
            "[program.a]\ncommand=[\"x\"]\nnumprocs = 99999999999999999999\n",
        ),
        (
            "toml_config",
            "[program.a]\ncommand=[\"x\"]\nstop_signal = 99999999999\n",
        ),
        (
            "toml_config",
            "[program.a]\ncommand=[\"x\"]\nbackoff = { initial = \"18446744073709551616s\" }\n",
        ),
        ("procfile", "\u{feff}web: x\n"),
        ("procfile", ":\n"),
        ("dotenv", "=\n\"\n'"),
    ];
    for (target, input) in cases {
        let f: &dyn Fn(&[u8]) = match *target {
            "procfile" => &procfile,
            "toml_config" => &toml_config,
            _ => &dotenv,
        };
        f(input.as_bytes());
    }
}
