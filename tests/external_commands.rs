//! `meshpath NAME ARGS…` for a command that is not built in: the binary `meshpath-NAME` runs in its
//! place with the arguments as given and its exit status passed through; a missing one is a clear
//! error. A test-owned `meshpath-echo-status` on PATH stands in for the lab's binaries.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

fn meshpath(args: &[&str], path: Option<&PathBuf>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshpath"));
    command.args(args);
    if let Some(dir) = path {
        command.env("PATH", dir);
    }
    command.output().expect("meshpath runs")
}

/// A directory with `meshpath-echo-status`: prints its arguments one per line, exits with the first.
fn stand_in() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mp-external-cmd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("meshpath-echo-status");
    std::fs::write(
        &script,
        "#!/bin/sh\nfor a in \"$@\"; do echo \"[$a]\"; done\nexit \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn runs_the_command_with_its_arguments_and_exit_status() {
    let dir = stand_in();
    let out = meshpath(
        &["echo-status", "7", "two words", "--prefix", "-o"],
        Some(&dir),
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, "[7]\n[two words]\n[--prefix]\n[-o]\n");
    let ok = meshpath(&["echo-status", "0"], Some(&dir));
    assert!(ok.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_command_is_named_with_where_it_was_looked_for() {
    let empty = std::env::temp_dir().join(format!("mp-external-none-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = meshpath(&["no-such-tool", "x"], Some(&empty));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let beside = PathBuf::from(env!("CARGO_BIN_EXE_meshpath"));
    let beside = beside.parent().unwrap().display().to_string();
    assert!(
        stderr.contains("unknown command `no-such-tool`") && stderr.contains(&beside),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn help_names_the_lab_and_the_demo() {
    let out = meshpath(&["--help"], None);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("\n  lab "), "{help}");
    assert!(help.contains("\n  demo "), "{help}");
}
