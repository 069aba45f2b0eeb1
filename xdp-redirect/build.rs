//! Compiles bpf/redirect.bpf.c with clang into OUT_DIR; the loader embeds the object with include_bytes!.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "bpf/redirect.bpf.c";

/// Debian's multiarch tuple of the target (x86_64-linux-gnu, aarch64-linux-gnu, …).
fn multiarch() -> String {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    format!("{arch}-linux-gnu")
}

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("redirect.bpf.o");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        // Debian keeps asm/types.h under the multiarch directory, which -target bpf does not search.
        .arg(format!("-I/usr/include/{}", multiarch()))
        .arg("-c")
        .arg(SOURCE)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("running {clang} to build {SOURCE}: {e} (install clang)"));
    assert!(
        status.success(),
        "{clang} failed to compile {SOURCE}: {status}"
    );
}
