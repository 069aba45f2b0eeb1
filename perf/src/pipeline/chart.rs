//! The pipeline's chart, perf/pipeline.svg: ns per packet of each path, with the per-path target
//! drawn across it, and of each stage alone, as horizontal bars on one scale. Written by `report`
//! from pipeline.json, so it always shows the figures RESULTS.md prints.

use std::fmt::Write;

use super::{path_label, PipelineReport};
use crate::svg::escape;

const WIDTH: f64 = 760.0;
const LABEL_W: f64 = 330.0;
const RIGHT: f64 = 90.0;
const BAR_H: f64 = 18.0;
const ROW_H: f64 = 26.0;
const TITLE_H: f64 = 50.0;
const GROUP_GAP: f64 = 34.0;

/// One group of bars: its heading, (label, ns per packet) rows, and a target drawn across them.
struct Group<'a> {
    heading: &'a str,
    rows: Vec<(&'a str, f64)>,
    target_ns: Option<(&'a str, f64)>,
}

pub fn svg(report: &PipelineReport) -> String {
    let paths = Group {
        heading: "by path (its harness taken off)",
        rows: report
            .paths
            .iter()
            .map(|(name, ns)| (path_label(name), *ns))
            .collect(),
        target_ns: Some(("target for an established path", report.target_path_ns)),
    };
    let stages = Group {
        heading: "by stage, each alone",
        rows: report
            .stages
            .iter()
            .map(|(n, ns)| (n.as_str(), *ns))
            .collect(),
        target_ns: None,
    };
    render(
        "meshpath pipeline: ns per packet (shorter is better)",
        &[paths, stages],
    )
}

fn render(title: &str, groups: &[Group<'_>]) -> String {
    let top = groups
        .iter()
        .flat_map(|g| {
            g.rows
                .iter()
                .map(|&(_, ns)| ns)
                .chain(g.target_ns.map(|(_, ns)| ns))
        })
        .fold(0.0, f64::max)
        .max(f64::EPSILON);
    let plot_w = WIDTH - LABEL_W - RIGHT;
    let x_of = |ns: f64| LABEL_W + ns.max(0.0) / top * plot_w;
    let rows: usize = groups.iter().map(|g| g.rows.len()).sum();
    let height = TITLE_H + groups.len() as f64 * (GROUP_GAP + 12.0) + rows as f64 * ROW_H + 20.0;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = write!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        out,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let mut y = TITLE_H;
    for group in groups {
        y += GROUP_GAP;
        let _ = write!(
            out,
            r#"<text x="10" y="{:.1}" font-weight="bold">{}</text>"#,
            y - 10.0,
            escape(group.heading)
        );
        let first = y;
        for &(label, ns) in &group.rows {
            bar(&mut out, y, label, ns, x_of(ns));
            y += ROW_H;
        }
        if let Some((name, target)) = group.target_ns.filter(|_| !group.rows.is_empty()) {
            let x = x_of(target);
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#cc3311" stroke-dasharray="4 3"/>"##,
                first - 4.0,
                y - 4.0
            );
            let _ = write!(
                out,
                r##"<text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#cc3311">{}: {target:.0} ns</text>"##,
                y + 10.0,
                escape(name)
            );
            y += 12.0;
        }
    }
    out.push_str("</svg>\n");
    out
}

fn bar(out: &mut String, y: f64, label: &str, ns: f64, end: f64) {
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
        LABEL_W - 8.0,
        y + BAR_H - 5.0,
        escape(label)
    );
    let _ = write!(
        out,
        r##"<rect x="{LABEL_W}" y="{y:.1}" width="{:.1}" height="{BAR_H}" fill="#4477aa"/>"##,
        end - LABEL_W
    );
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}">{ns:.0} ns</text>"#,
        end + 5.0,
        y + BAR_H - 5.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_row_is_a_bar_with_its_value(
            paths in proptest::collection::vec(0.0f64..5000.0, 0..6),
            stages in proptest::collection::vec(0.0f64..500.0, 0..9),
        ) {
            let path_names: Vec<String> = (0..paths.len()).map(|i| format!("path <{i}>")).collect();
            let stage_names: Vec<String> = (0..stages.len()).map(|i| format!("stage {i}")).collect();
            let groups = [
                Group { heading: "paths", rows: path_names.iter().map(String::as_str).zip(paths.iter().copied()).collect(), target_ns: Some(("target", 100.0)) },
                Group { heading: "stages", rows: stage_names.iter().map(String::as_str).zip(stages.iter().copied()).collect(), target_ns: None },
            ];
            let chart = render("t", &groups);
            prop_assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
            prop_assert_eq!(chart.matches("<rect").count(), 1 + paths.len() + stages.len());
            prop_assert_eq!(chart.matches("<line").count(), usize::from(!paths.is_empty()));
            for group in &groups {
                for (label, ns) in &group.rows {
                    prop_assert!(chart.contains(&escape(label)));
                    let value = format!(">{ns:.0} ns<");
                    prop_assert!(chart.contains(&value));
                }
            }
        }
    }

    #[test]
    fn the_longest_bar_spans_the_plot_and_the_target_stands_where_its_value_is() {
        let groups = [Group {
            heading: "paths",
            rows: vec![("slow", 400.0), ("fast", 100.0)],
            target_ns: Some(("target", 100.0)),
        }];
        let chart = render("t", &groups);
        let plot_w = WIDTH - LABEL_W - RIGHT;
        assert!(chart.contains(&format!(r#"width="{plot_w:.1}""#)));
        assert!(chart.contains(&format!(r#"width="{:.1}""#, plot_w / 4.0)));
        let target_x = LABEL_W + plot_w / 4.0;
        assert!(chart.contains(&format!(r#"x1="{target_x:.1}""#)));
    }
}
