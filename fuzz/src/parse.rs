//! The parser on arbitrary bytes: it never panics, and what it reports lies inside the frame.

use meshpath_dataplane::parse::parse;

pub fn run(frame: &[u8]) {
    if let Ok(parsed) = parse(frame) {
        assert!(parsed.l3_offset <= parsed.l4_offset);
        assert!(parsed.l4_offset <= parsed.l3_end());
        assert!(parsed.l3_end() <= frame.len());
    }
}
