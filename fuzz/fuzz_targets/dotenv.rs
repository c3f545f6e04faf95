#![no_main]
//! Any text given to the .env loader: an error or variables, never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = brood::config::parse_env_text(&String::from_utf8_lossy(data));
});
