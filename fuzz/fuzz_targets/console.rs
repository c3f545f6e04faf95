#![no_main]
//! Any bytes typed at the console: commands, never a panic, bounded memory.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = brood::console::LineReader::default();
    let mut out = Vec::new();
    for chunk in data.chunks(7) {
        reader.feed(chunk, &mut out);
    }
    reader.finish(&mut out);
});
