//! External commands: `meshpath NAME ARGS…`, for a NAME that is not built in, runs `meshpath-NAME
//! ARGS…` — the binary next to the running executable, otherwise the first on PATH — the way git and
//! cargo run theirs. The process is replaced (exec), so the command's output, signals and exit status
//! are its own. The lab and the demo live there, out of the binary that runs on production nodes.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::anyhow;

/// The external commands this project ships: name, and the package that builds `meshpath-NAME`.
const SHIPPED: [(&str, &str); 2] = [("lab", "meshpath-lab"), ("demo", "meshpath-lab")];

/// What `meshpath --help` says of them.
pub const HELP: &str = "\
Commands in their own binaries (meshpath-COMMAND, next to meshpath or on PATH):
  lab    Clusters, nodes and pods in network namespaces on this machine (meshpath lab --help)
  demo   Cilium's ClusterMesh demo on a two-cluster lab (meshpath demo --help)";

/// Runs `meshpath-NAME` with the rest of `args` in place of this process; returns only if it cannot.
pub fn exec(args: &[OsString]) -> anyhow::Error {
    let Some((name, rest)) = args.split_first() else {
        return anyhow!("no command given (see meshpath --help)");
    };
    let Some(name) = name.to_str().filter(|n| is_command_name(n)) else {
        return anyhow!("unknown command {name:?} (see meshpath --help)");
    };
    let binary = format!("meshpath-{name}");
    let exe = std::env::current_exe().ok();
    let beside = exe.as_deref().and_then(Path::parent);
    match find(&binary, beside, std::env::var_os("PATH").as_deref()) {
        Some(path) => {
            let error = Command::new(&path).args(rest).exec();
            anyhow!("running {}: {error}", path.display())
        }
        None => not_found(name, beside),
    }
}

/// Letters, digits, `-` and `_`: a name that stays a file name once prefixed, never a path.
fn is_command_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `binary` in `beside`, otherwise in the first directory of `path` that has it; executable files only.
fn find(binary: &str, beside: Option<&Path>, path: Option<&OsStr>) -> Option<PathBuf> {
    let on_path = path.into_iter().flat_map(std::env::split_paths);
    beside
        .map(Path::to_owned)
        .into_iter()
        .chain(on_path)
        .map(|dir| dir.join(binary))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn not_found(name: &str, beside: Option<&Path>) -> anyhow::Error {
    let beside = beside.map_or("this executable".to_owned(), |d| d.display().to_string());
    match SHIPPED.iter().find(|(shipped, _)| *shipped == name) {
        Some((_, package)) => anyhow!(
            "meshpath-{name} not found next to {beside} or on PATH; build it with `cargo build -p {package}`"
        ),
        None => anyhow!(
            "unknown command `{name}` (see meshpath --help): no meshpath-{name} next to {beside} or on PATH"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executable(dir: &Path, name: &str, mode: u32) {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn beside_the_executable_first_then_path() {
        let root = std::env::temp_dir().join(format!("mp-external-{}", std::process::id()));
        let (beside, first, second) = (root.join("bin"), root.join("p1"), root.join("p2"));
        executable(&first, "meshpath-lab", 0o644);
        executable(&second, "meshpath-lab", 0o755);
        let path = std::env::join_paths([&first, &second]).unwrap();
        assert_eq!(
            find("meshpath-lab", Some(&beside), Some(&path)),
            Some(second.join("meshpath-lab")),
            "not executable: skipped"
        );
        executable(&beside, "meshpath-lab", 0o755);
        assert_eq!(
            find("meshpath-lab", Some(&beside), Some(&path)),
            Some(beside.join("meshpath-lab"))
        );
        assert_eq!(find("meshpath-demo", Some(&beside), Some(&path)), None);
        assert_eq!(find("meshpath-demo", None, None), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn names_never_paths() {
        for ok in ["lab", "demo", "my-tool_2"] {
            assert!(is_command_name(ok), "{ok}");
        }
        for bad in ["", "../bin/sh", "a/b", "-x", "lab ", "läb"] {
            assert!(!is_command_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn missing_commands_say_how_to_get_them() {
        let dir = Path::new("/opt/meshpath/bin");
        let lab = not_found("lab", Some(dir)).to_string();
        assert_eq!(
            lab,
            "meshpath-lab not found next to /opt/meshpath/bin or on PATH; build it with `cargo build -p meshpath-lab`"
        );
        let demo = not_found("demo", Some(dir)).to_string();
        assert!(demo.ends_with("`cargo build -p meshpath-lab`"), "{demo}");
        let typo = not_found("stauts", Some(dir)).to_string();
        assert!(typo.starts_with("unknown command `stauts`"), "{typo}");
    }
}
