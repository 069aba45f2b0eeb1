//! Which `meshpath` binary the lab runs its agents with: `MESHPATH_BIN` when set, otherwise the one
//! next to the running executable — where `cargo build` and an install put both — never a guessed path;
//! and the `meshpath-lab` binary that runs the stand-in API servers, beside the agent's.

use std::path::{Path, PathBuf};

/// The variable that names the agent binary explicitly.
pub const MESHPATH_BIN: &str = "MESHPATH_BIN";

#[derive(Debug, thiserror::Error)]
pub enum AgentBinaryError {
    #[error("{MESHPATH_BIN}={}: no such file", .0.display())]
    Named(PathBuf),
    #[error(
        "the agent binary `meshpath` is not next to {} (build it with `cargo build -p meshpath`, or set {MESHPATH_BIN})",
        .0.display()
    )]
    NotBeside(PathBuf),
    #[error("where this program runs from: {0}")]
    CurrentExe(#[source] std::io::Error),
}

/// The `meshpath` binary to start agents with.
pub fn agent_binary() -> Result<PathBuf, AgentBinaryError> {
    let exe = std::env::current_exe().map_err(AgentBinaryError::CurrentExe)?;
    find(std::env::var_os(MESHPATH_BIN).map(PathBuf::from), &exe)
}

/// The variable that names the lab's binary (which runs the stand-in API servers) explicitly.
pub const MESHPATH_LAB_BIN: &str = "MESHPATH_LAB_BIN";

/// The `meshpath-lab` binary to run the stand-in API servers with: `MESHPATH_LAB_BIN` when set,
/// otherwise the one beside the agent binary (where `cargo build` puts both).
pub fn lab_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(MESHPATH_LAB_BIN).map(PathBuf::from) {
        anyhow::ensure!(
            path.is_file(),
            "{MESHPATH_LAB_BIN}={}: no such file",
            path.display()
        );
        return Ok(path);
    }
    let agent = agent_binary()?;
    let beside = agent.with_file_name("meshpath-lab");
    anyhow::ensure!(
        beside.is_file(),
        "`meshpath-lab`, which runs the lab's stand-in API servers, is not beside {} (build it with \
         `cargo build -p meshpath-lab`, or set {MESHPATH_LAB_BIN})",
        agent.display()
    );
    Ok(beside)
}

fn find(named: Option<PathBuf>, exe: &Path) -> Result<PathBuf, AgentBinaryError> {
    if let Some(path) = named {
        return match path.is_file() {
            true => Ok(path),
            false => Err(AgentBinaryError::Named(path)),
        };
    }
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let beside = dir.join("meshpath");
    match beside.is_file() {
        true => Ok(beside),
        false => Err(AgentBinaryError::NotBeside(dir.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_first_then_beside_the_executable() {
        let dir = std::env::temp_dir().join(format!("mp-agent-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("meshpath-lab");
        let error = find(None, &exe).unwrap_err().to_string();
        assert!(error.contains(&*dir.to_string_lossy()), "{error}");
        assert!(error.contains("cargo build -p meshpath"), "{error}");

        std::fs::write(dir.join("meshpath"), "").unwrap();
        assert_eq!(find(None, &exe).unwrap(), dir.join("meshpath"));

        let named = dir.join("elsewhere");
        let error = find(Some(named.clone()), &exe).unwrap_err().to_string();
        assert!(error.starts_with("MESHPATH_BIN="), "{error}");
        std::fs::write(&named, "").unwrap();
        assert_eq!(find(Some(named.clone()), &exe).unwrap(), named);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
