//! The benchmark's chart: one SVG bar per way of forwarding, in Mpps, written by hand (no font or
//! drawing library needed); the text is left for the viewer to render.

use std::fmt::Write;

use crate::svg::escape;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 360.0;
const MARGIN: f64 = 60.0;

/// An SVG bar chart of `bars` (label, Mpps) under `title`.
pub fn svg(title: &str, bars: &[(&str, f64)]) -> String {
    let top = bars
        .iter()
        .map(|&(_, v)| v)
        .fold(0.0_f64, f64::max)
        .max(f64::EPSILON);
    let plot_h = HEIGHT - 2.0 * MARGIN;
    let slot = (WIDTH - 2.0 * MARGIN) / bars.len().max(1) as f64;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="14">"#
    );
    let _ = write!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        out,
        r#"<text x="{}" y="30" text-anchor="middle" font-size="16">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let base = HEIGHT - MARGIN;
    let _ = write!(
        out,
        r#"<line x1="{MARGIN}" y1="{base}" x2="{}" y2="{base}" stroke="black"/>"#,
        WIDTH - MARGIN
    );
    for (i, &(label, value)) in bars.iter().enumerate() {
        let h = (value.max(0.0) / top) * plot_h;
        let x = MARGIN + slot * i as f64 + slot * 0.2;
        let w = slot * 0.6;
        let mid = x + w / 2.0;
        let _ = write!(
            out,
            r##"<rect x="{x:.1}" y="{:.1}" width="{w:.1}" height="{h:.1}" fill="#4477aa"/>"##,
            base - h
        );
        let _ = write!(
            out,
            r#"<text x="{mid:.1}" y="{:.1}" text-anchor="middle">{value:.2} Mpps</text>"#,
            base - h - 6.0
        );
        let _ = write!(
            out,
            r#"<text x="{mid:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            base + 20.0,
            escape(label)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_bar_is_drawn_with_its_value(values in proptest::collection::vec(0.0f64..100.0, 1..5)) {
            let labels: Vec<String> = (0..values.len()).map(|i| format!("way <{i}>")).collect();
            let bars: Vec<(&str, f64)> = labels.iter().map(String::as_str).zip(values.iter().copied()).collect();
            let chart = svg("rates", &bars);
            prop_assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
            prop_assert_eq!(chart.matches("<rect").count(), values.len() + 1);
            for (label, value) in &bars {
                let value_text = format!("{value:.2} Mpps");
                prop_assert!(chart.contains(&value_text));
                prop_assert!(chart.contains(&escape(label)));
            }
        }
    }

    #[test]
    fn the_tallest_bar_fills_the_plot_and_a_zero_bar_is_flat() {
        let chart = svg("t", &[("a", 2.0), ("b", 0.0)]);
        assert!(chart.contains(&format!(r#"height="{:.1}""#, HEIGHT - 2.0 * MARGIN)));
        assert!(chart.contains(r#"height="0.0""#));
    }
}
