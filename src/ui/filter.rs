//! The page's filter line: `meshpath observe`'s filter flags as a person types them
//! (`--verdict dropped --not --pod default/x-wing`, `--label 'tier in (a,b)'`), split as a shell
//! splits words and parsed by the very flags `meshpath observe` has. The filters pick the flows of
//! both the map and the table.

use meshpath_api::flow::Flow;
use meshpath_api::flow_filter::FlowFilters;

/// A parsed filter line and its text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterLine {
    pub text: String,
    pub filters: FlowFilters,
}

/// Longer lines are refused: no one types that much, and the server parses each one.
const MAX_LINE: usize = 4096;

impl FilterLine {
    pub fn parse(text: &str) -> Result<FilterLine, String> {
        if text.len() > MAX_LINE {
            return Err(format!("the filter is longer than {MAX_LINE} bytes"));
        }
        let words = split_words(text)?;
        let filters = crate::cli::parse_filters(&words).map_err(|e| {
            let text = e.to_string();
            // clap's own `Usage:` and `--help` lines say nothing to the page's reader.
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            first.trim_start_matches("error: ").to_owned()
        })?;
        Ok(FilterLine {
            text: text.trim().to_owned(),
            filters,
        })
    }

    pub fn matches(&self, flow: &Flow) -> bool {
        self.filters.matches(flow)
    }
}

/// Words as a POSIX shell splits them: whitespace apart, '…' and "…" quoting, \ escaping outside
/// single quotes.
fn split_words(text: &str) -> Result<Vec<String>, String> {
    let (mut words, mut word, mut in_word) = (Vec::new(), String::new(), false);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("a ' without its closing '".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => word.push(chars.next().ok_or("a \\ at the end")?),
                        Some(c) => word.push(c),
                        None => return Err("a \" without its closing \"".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next().ok_or("a \\ at the end")?);
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_api::flow::Verdict;
    use meshpath_api::flow_filter::{End, Filter};

    #[test]
    fn words_split_as_a_shell_splits_them() {
        let words = split_words(r#"  --label 'tier in (a, b)' --pod "default/x wing" a\ b"#);
        assert_eq!(
            words.unwrap(),
            [
                "--label",
                "tier in (a, b)",
                "--pod",
                "default/x wing",
                "a b"
            ]
        );
        assert_eq!(split_words("''").unwrap(), [""]);
        assert!(split_words("--pod 'x").is_err());
        assert!(split_words("--pod \"x").is_err());
        assert!(split_words("x\\").is_err());
    }

    #[test]
    fn observe_filters_parse_with_not() {
        let line = FilterLine::parse("--verdict dropped --not --from-pod default/x-wing").unwrap();
        assert_eq!(
            line.filters.allow,
            [Filter::Verdict {
                verdict: Verdict::Dropped
            }]
        );
        assert!(matches!(
            &line.filters.deny[..],
            [Filter::Pod {
                end: End::Source,
                ..
            }]
        ));
        assert_eq!(FilterLine::parse("   ").unwrap(), FilterLine::default());
    }

    #[test]
    fn bad_filters_are_named_in_one_line() {
        for (line, named) in [
            ("--verdict maybe", "maybe"),
            ("--ip 10.0.0.300", "10.0.0.300"),
            ("--follow", "--follow"),
            ("--socket /run/x.sock", "--socket"),
            ("x-wing", "x-wing"),
        ] {
            let error = FilterLine::parse(line).unwrap_err();
            assert!(error.contains(named), "{line}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
        assert!(FilterLine::parse(&"x".repeat(5000)).is_err());
    }
}
