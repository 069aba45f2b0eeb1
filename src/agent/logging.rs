//! The agent's log: to standard error, filtered by `RUST_LOG` (info by default), as plain text — in
//! colour only for a person at a terminal — or, with `log-format: json`, one JSON object per line
//! for log collectors.

use std::io::IsTerminal;

use serde::Deserialize;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// `log-format` in the agent's configuration.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Sends the agent's log to standard error in `format`.
pub fn init(format: LogFormat) {
    let _ = tracing::subscriber::set_global_default(subscriber(
        format,
        filter(),
        colour_on_stderr(),
        std::io::stderr,
    ));
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    colour: bool,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(colour).finish()),
        LogFormat::Json => Box::new(builder.json().with_current_span(false).finish()),
    }
}

/// Colour only for a person at a terminal: log files, journald and Kubernetes get plain text, and
/// `NO_COLOR` (any non-empty value, as no-color.org defines it) turns it off everywhere.
fn colour_on_stderr() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(format: LogFormat) -> String {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = subscriber(format, EnvFilter::new("info"), false, move || sink.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(node = "c1-n1", flows = 3, "agent running");
            tracing::debug!("not at info");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn json_is_one_object_per_line() {
        let text = logged(LogFormat::Json);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["fields"]["message"], "agent running");
        assert_eq!(line["fields"]["node"], "c1-n1");
        assert_eq!(line["fields"]["flows"], 3);
        assert!(line["timestamp"].is_string());
    }

    #[test]
    fn text_is_plain_without_a_terminal() {
        let text = logged(LogFormat::Text);
        assert!(
            text.contains("INFO") && text.contains("agent running node=\"c1-n1\" flows=3"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "no colour codes: {text:?}");
    }
}
