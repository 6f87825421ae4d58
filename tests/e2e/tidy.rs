//! Rules the code keeps, read from the sources.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every crate's non-test sources, as (path relative to the workspace, text).
fn crate_sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root.join("crates")).unwrap() {
        let src = krate.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            (relative, text)
        })
        .collect()
}

/// Whether `line` assigns to `place` (`place = …`, not `place == …`).
fn assigns(line: &str, place: &str) -> bool {
    line.match_indices(place).any(|(at, _)| {
        let rest = line[at + place.len()..].trim_start();
        rest.starts_with('=') && !rest.starts_with("==")
    })
}

#[test]
fn only_the_state_machine_assigns_a_jobs_status() {
    let offenders: Vec<String> = crate_sources()
        .iter()
        .filter(|(path, _)| path != "crates/cellport-core/src/job.rs")
        .flat_map(|(path, text)| {
            text.lines()
                .enumerate()
                .filter(|(_, line)| {
                    let line = line.trim_start();
                    !line.starts_with("//")
                        && (line.contains("status = JobStatus::") || assigns(line, "job.status"))
                })
                .map(move |(n, line)| format!("{path}:{}: {}", n + 1, line.trim()))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "assign a job's status through its methods in cellport-core:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn every_source_file_says_what_it_is_for() {
    let missing: Vec<String> = crate_sources()
        .into_iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(path, _)| path)
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! line at the top: {missing:?}"
    );
}
