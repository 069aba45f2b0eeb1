//! `meshpath completion SHELL` and `meshpath man`: shell completions and man pages, both generated
//! from the same clap definitions as `--help`, so none of them can drift from the commands.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use super::args::Cli;
use super::output;

/// Writes the completion script for `shell` to standard output.
pub fn completion(shell: Shell) -> anyhow::Result<ExitCode> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "meshpath", &mut script);
    output::print(&String::from_utf8_lossy(&script))?;
    Ok(ExitCode::SUCCESS)
}

/// With `dir`, one page per command there (`meshpath.1`, `meshpath-status.1`,
/// `meshpath-service-list.1`, …); without, `meshpath(1)` on standard output.
pub fn man(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let command = Cli::command();
    match dir {
        None => output::print(&String::from_utf8_lossy(&page(&command)?))?,
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let written = write_pages(&command, "meshpath", dir)?;
            output::println(&format!("{written} man pages in {}", dir.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn page(command: &clap::Command) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut out)?;
    Ok(out)
}

/// `command`'s page as `name.1`, then its subcommands' as `name-sub.1`; how many were written.
fn write_pages(command: &clap::Command, name: &str, dir: &Path) -> anyhow::Result<usize> {
    // A one-shot command: the few names it makes may live as long as it does.
    let named = command.clone().name(&*name.to_owned().leak());
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page(&named)?).with_context(|| format!("writing {}", path.display()))?;
    let mut written = 1;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        written += write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_for_every_command() {
        let dir = std::env::temp_dir().join(format!("mp-man-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let written = write_pages(&Cli::command(), "meshpath", &dir).unwrap();
        assert!(written >= 15, "{written}");
        let status = std::fs::read_to_string(dir.join("meshpath-status.1")).unwrap();
        assert!(status.contains(".TH meshpath-status"), "{status}");
        assert!(status.contains("\\-\\-brief"), "the flags are documented");
        assert!(dir.join("meshpath-service-list.1").exists());
        assert!(dir.join("meshpath-observe.1").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn completions_for_the_shells() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "meshpath", &mut script);
            let script = String::from_utf8(script).unwrap();
            assert!(
                script.contains("observe") && script.contains("from-pod"),
                "{shell}"
            );
        }
    }
}
