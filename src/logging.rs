//! brood's own messages: `log` records formatted by env_logger into a
//! queue that the event loop moves into its stderr sink, so a message never
//! lands in the middle of a child's line and never blocks the loop.

use std::io::{self, Write};
use std::sync::Mutex;

use log::LevelFilter;

/// Messages beyond this many queued bytes are dropped (stderr stalled).
const QUEUE_LIMIT: usize = 4 << 20;

static QUEUE: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct QueueWriter;

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Ok(mut q) = QUEUE.lock() {
            if q.len() + buf.len() <= QUEUE_LIMIT {
                q.extend_from_slice(buf);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `-v` raises, `-q` lowers the level from info; RUST_LOG, when set, wins.
pub fn init(verbose: u8, quiet: u8) {
    let level = match verbose as i8 - quiet as i8 {
        i8::MIN..=-2 => LevelFilter::Error,
        -1 => LevelFilter::Warn,
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(level)
        .parse_env("RUST_LOG")
        .target(env_logger::Target::Pipe(Box::new(QueueWriter)))
        .format(|f, record| {
            let tag = match record.level() {
                log::Level::Error => "error: ",
                log::Level::Warn => "warning: ",
                log::Level::Info => "",
                log::Level::Debug => "debug: ",
                log::Level::Trace => "trace: ",
            };
            writeln!(f, "brood: {tag}{}", record.args())
        });
    let _ = builder.try_init();
}

/// Take what is queued.
pub fn take_queued() -> Vec<u8> {
    match QUEUE.lock() {
        Ok(mut q) => std::mem::take(&mut *q),
        Err(_) => Vec::new(),
    }
}

/// Write what is queued straight to stderr (outside the loop, at exit).
pub fn flush_to_stderr() {
    let bytes = take_queued();
    if !bytes.is_empty() {
        let _ = io::stderr().write_all(&bytes);
    }
}
