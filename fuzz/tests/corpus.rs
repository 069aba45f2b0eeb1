//! The seed corpus is what `seeds` makes, and every file of `corpus/` and `regressions/` goes through
//! its target without breaking an invariant: the fuzz targets build and hold in every `cargo test`.

use std::path::{Path, PathBuf};

use meshpath_fuzz::{seeds, TARGETS};

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

#[test]
fn the_seed_files_are_the_seeds() {
    let write = std::env::var_os("MESHPATH_WRITE_SEEDS").is_some();
    for (target, name, bytes) in seeds::all() {
        let path = dir("corpus").join(target).join(name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == bytes,
            "{} differs from its seed: rewrite with MESHPATH_WRITE_SEEDS=1 cargo test -p meshpath-fuzz",
            path.display()
        );
    }
}

#[test]
fn every_corpus_and_regression_file_passes_its_target() {
    let mut replayed = 0;
    for (target, run) in TARGETS {
        for base in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(dir(base).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| run(&bytes));
                assert!(outcome.is_ok(), "{} breaks {target}", path.display());
                replayed += 1;
            }
        }
    }
    assert!(replayed >= seeds::all().len(), "replayed {replayed} files");
}
