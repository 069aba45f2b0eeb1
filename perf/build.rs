//! Stamps meshpath-perf with what its figures were measured on: the git commit it is built from, whether
//! the measured crates differed from that commit (`dirty`), and the compiler. Each benchmark's JSON
//! carries them ([`provenance`](src/provenance.rs)). A build outside a checkout says `unknown`.
//! Compiles way (d)'s XDP program, bpf/encap.bpf.c, with clang into OUT_DIR (as xdp-redirect's
//! build does); `forward` embeds the object with include_bytes!.

use std::path::PathBuf;
use std::process::Command;

const BPF_SOURCE: &str = "bpf/encap.bpf.c";

/// The crates whose code the benchmarks measure (and the lock that pins their dependencies): an
/// edit in any of them reruns this script, so `dirty` follows the tree that was compiled.
const MEASURED: &[&str] = &[
    "../dataplane",
    "../control",
    "../api",
    "../xdp-redirect",
    "../lab/src",
    "../src",
    "src",
    "bpf",
    "../Cargo.lock",
];

fn main() {
    compile_bpf();
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    let mut status = vec![
        "--no-optional-locks",
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
    ];
    status.extend(MEASURED);
    let dirty = match git(&status) {
        Some(changes) => !changes.is_empty(),
        None => commit == "unknown",
    };
    for path in ["HEAD", "logs/HEAD", "index"] {
        if let Some(file) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    for path in MEASURED {
        println!("cargo:rerun-if-changed={path}");
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=MESHPATH_PERF_COMMIT={commit}");
    println!("cargo:rustc-env=MESHPATH_PERF_DIRTY={dirty}");
    println!("cargo:rustc-env=MESHPATH_PERF_RUSTC={version}");
}

fn compile_bpf() {
    println!("cargo:rerun-if-changed={BPF_SOURCE}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("encap.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        // Debian keeps asm/types.h under the multiarch directory, which -target bpf does not search.
        .arg(format!("-I/usr/include/{arch}-linux-gnu"))
        .arg("-c")
        .arg(BPF_SOURCE)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("running {clang} to build {BPF_SOURCE}: {e} (install clang)"));
    assert!(
        status.success(),
        "{clang} failed to compile {BPF_SOURCE}: {status}"
    );
}

/// `git ARGS` in the crate's directory; `None` outside a checkout or on failure. Empty output is
/// `Some("")` (a clean `status`).
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    out.status.success().then(|| text.trim().to_owned())
}
