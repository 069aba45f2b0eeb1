//! What the benchmarks' hand-written SVG charts share.

/// `text` safe inside an SVG element.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
