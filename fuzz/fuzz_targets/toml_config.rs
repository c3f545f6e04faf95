#![no_main]
//! Any text given to the brood.toml loader: an error or programs, never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = brood::config::parse_config_text(text, std::path::Path::new("brood.toml"), true);
    }
});
