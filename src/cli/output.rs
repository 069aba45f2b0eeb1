//! The CLI's output: everything goes through here, so that a reader that stops reading (`meshpath
//! node list -o json | head`) ends the command quietly instead of a panic on the broken pipe.

use std::fmt;
use std::io::{self, Write};

/// Standard output was closed by its reader: not an error to report, the command is done.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes `text` to standard output and flushes it.
pub fn print(text: &str) -> anyhow::Result<()> {
    write_to(&mut io::stdout().lock(), text)
}

/// `text` and a newline.
pub fn println(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    write_to(&mut out, text)?;
    write_to(&mut out, "\n")
}

/// A value as pretty JSON, and a newline.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println(&serde_json::to_string_pretty(value)?)
}

fn write_to(out: &mut impl Write, text: &str) -> anyhow::Result<()> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// Whether `error` is only a closed standard output.
pub fn is_closed(error: &anyhow::Error) -> bool {
    error.downcast_ref::<StdoutClosed>().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_is_its_own_quiet_error() {
        let error = write_to(&mut Closed, "x").unwrap_err();
        assert!(is_closed(&error));
        let other = anyhow::anyhow!("agent gone");
        assert!(!is_closed(&other));
    }
}
