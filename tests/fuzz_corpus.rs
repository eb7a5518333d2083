//! The fuzz targets' checks (`fuzz/`, run by `scripts/fuzz.sh` on nightly) on every checked-in
//! input, on stable, in the normal test run: the seed corpora (`fuzz/corpus/<target>/`) and every
//! input that once made a target fail (`fuzz/regressions/<target>/`). The checks are the very
//! functions the targets call, so an input passes here exactly when it passes there.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// A fuzz target's check of one input: it panics when the input breaks an invariant.
type Check = fn(&[u8]);

/// Each fuzz target and its check.
const TARGETS: &[(&str, Check)] = &[
    ("envelope_json", gsio_relay_core::fuzzing::envelope_json),
    ("envelope_proto", gsio_relay::fuzzing::envelope_proto),
    ("config_toml", gsio_relay_core::fuzzing::config_toml),
    ("auth", gsio_relay_core::fuzzing::auth),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files in `dir` (none when it does not exist), sorted.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_check_and_seeds() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let manifest: toml::Table = manifest.parse().unwrap();
    let bins: BTreeSet<&str> = manifest["bin"]
        .as_array()
        .unwrap()
        .iter()
        .map(|bin| bin["name"].as_str().unwrap())
        .collect();
    let checked: BTreeSet<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(bins, checked, "fuzz/Cargo.toml's targets and this test's");
    for folder in ["corpus", "regressions"] {
        for dir in inputs_dirs(folder) {
            let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
            assert!(
                checked.contains(name.as_str()),
                "{} names no target",
                dir.display()
            );
        }
    }
    for (target, _) in TARGETS {
        let seeds = inputs(&fuzz_dir().join("corpus").join(target));
        assert!(!seeds.is_empty(), "no seeds for {target}");
    }
}

/// The folders under `fuzz/<folder>/`.
fn inputs_dirs(folder: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(fuzz_dir().join(folder)) else {
        return Vec::new();
    };
    entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .collect()
}

#[test]
fn every_checked_in_input_passes_its_targets_check() {
    let mut failed = Vec::new();
    let mut ran = 0;
    for (target, check) in TARGETS {
        for folder in ["corpus", "regressions"] {
            for file in inputs(&fuzz_dir().join(folder).join(target)) {
                let data = std::fs::read(&file).unwrap();
                ran += 1;
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failed.push(format!("{target}: {}: {why}", file.display()));
                }
            }
        }
    }
    assert!(ran > 0);
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
