//! Replays every saved input of every fuzz target through the same function the fuzzer runs:
//! the minimized corpus (`corpus/<target>/`), the crashers found and fixed
//! (`crashes/<target>/`), and for `sip` the RFC 4475/5118 torture messages of the sip crate.
//! A regression in a parser that the fuzzer had once covered fails here, under plain
//! `cargo test`, without AFL++.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

#[test]
fn replay_corpus_and_crashes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut total = 0;
    for &(name, target) in sluice_fuzz::TARGETS {
        let mut dirs = vec![
            root.join("corpus").join(name),
            root.join("crashes").join(name),
        ];
        if name == "sip" {
            let torture = root.join("../sip/tests/corpus");
            dirs.extend([torture.join("rfc4475"), torture.join("rfc5118")]);
        }
        let files: Vec<PathBuf> = dirs.iter().flat_map(|d| inputs(d)).collect();
        assert!(
            !files.is_empty(),
            "no corpus for fuzz target {name}: the replay would test nothing"
        );
        for f in &files {
            let data = std::fs::read(f).expect("readable corpus file");
            // A panic names the file: rerun it under the fuzzer binary or this test to debug.
            eprintln!("{name}: {}", f.display());
            target(&data);
        }
        total += files.len();
    }
    eprintln!("replayed {total} inputs");
}
