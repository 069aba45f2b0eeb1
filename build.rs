//! Stamps the binary with the git commit it is built from (`MESHPATH_GIT_COMMIT`), for `meshpath
//! version`, the status document and the metrics' build info. A build outside a checkout (a source
//! tarball, an image built without `.git`) may set `MESHPATH_GIT_COMMIT` itself; otherwise `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=MESHPATH_GIT_COMMIT");
    let commit = std::env::var("MESHPATH_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    // A new commit moves HEAD's log (in a worktree too), so the stamp follows it.
    for path in ["HEAD", "logs/HEAD"] {
        if let Some(file) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    println!("cargo:rustc-env=MESHPATH_GIT_COMMIT={commit}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}
