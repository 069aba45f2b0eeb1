//! Stage 1 on arbitrary bytes: `parse` must never panic, and what it reports must lie inside the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshpath_dataplane::parse::parse;

fuzz_target!(|frame: &[u8]| {
    if let Ok(parsed) = parse(frame) {
        assert!(parsed.l3_offset <= parsed.l4_offset);
        assert!(parsed.l4_offset <= parsed.l3_end());
        assert!(parsed.l3_end() <= frame.len());
    }
});
