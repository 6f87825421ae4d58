//! Rules the code keeps, read from the sources.

use std::path::{Path, PathBuf};

pub(crate) fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
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

/// The floors a crate sits on: a crate may depend only on crates of lower floors, and services
/// never on each other. Core and the process glue at the bottom; the seams and the store above
/// them; the pipeline and the HTTP edge (which answers for the store's and the seams' errors)
/// above those; the services; the CLI, which composes everything. The e2e package tests everything.
const FLOORS: &[(&str, u32)] = &[
    ("cellport-core", 0),
    ("cellport-runtime", 0),
    ("cellport-io", 1),
    ("cellport-store", 1),
    ("cellport-http", 2),
    ("cellport-testkit", 1),
    ("cellport-pipeline", 2),
    ("cellport-api", 3),
    ("cellport-worker", 3),
    ("cellport-gateway", 3),
    ("cellportctl", 4),
];

/// Edges the floors allow that are still refused outside tests: the api answers from the seams
/// alone and links no image decoding, XLSX or ZIP writing.
const FORBIDDEN: &[(&str, &str)] = &[("cellport-api", "cellport-pipeline")];

/// Dev-only crates, allowed only under `[dev-dependencies]`.
const DEV_ONLY: &[&str] = &["cellport-testkit"];

/// Every workspace manifest's name and its cellport dependencies, with their section.
fn manifests() -> Vec<(String, Vec<(String, String)>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.push(root.join("tests"));
    dirs.sort();
    dirs.into_iter()
        .filter(|d| d.join("Cargo.toml").is_file())
        .map(|dir| {
            let text = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            let mut name = String::new();
            let mut section = String::new();
            let mut deps = Vec::new();
            for line in text.lines().map(str::trim) {
                if line.starts_with('[') {
                    section = line.trim_matches(['[', ']']).to_owned();
                } else if section == "package" && line.starts_with("name") {
                    name = line.split('"').nth(1).unwrap().to_owned();
                } else if section.ends_with("dependencies") && line.starts_with("cellport") {
                    let dep = line.split(['.', ' ', '=']).next().unwrap().to_owned();
                    deps.push((section.clone(), dep));
                }
            }
            (name, deps)
        })
        .collect()
}

/// The edges of `manifests` the rules refuse, as readable lines.
fn forbidden_edges(manifests: &[(String, Vec<(String, String)>)]) -> Vec<String> {
    let floor = |name: &str| FLOORS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f);
    let mut refused = Vec::new();
    for (name, deps) in manifests {
        if name == "cellport-e2e" {
            continue;
        }
        for (section, dep) in deps {
            let why = if DEV_ONLY.contains(&dep.as_str()) {
                (section != "dev-dependencies")
                    .then_some("a dev-only crate outside dev-dependencies")
            } else if section == "dependencies"
                && FORBIDDEN.contains(&(name.as_str(), dep.as_str()))
            {
                Some("an edge the architecture refuses")
            } else {
                match (floor(name), floor(dep)) {
                    (Some(from), Some(to)) if to < from => None,
                    (Some(3), Some(3)) => Some("a service depending on another service"),
                    (Some(_), Some(_)) => Some("a crate depending on its own floor or above"),
                    _ => Some("a crate missing from the floors of tidy.rs"),
                }
            };
            if let Some(why) = why {
                refused.push(format!("{name} -> {dep} ({section}): {why}"));
            }
        }
    }
    refused
}

#[test]
fn crates_depend_only_on_the_floors_below_them() {
    let refused = forbidden_edges(&manifests());
    assert!(refused.is_empty(), "{}", refused.join("\n"));
}

#[test]
fn the_floor_check_refuses_what_it_should() {
    let manifest = |name: &str, deps: &[(&str, &str)]| {
        (
            name.to_owned(),
            deps.iter()
                .map(|(s, d)| ((*s).to_owned(), (*d).to_owned()))
                .collect::<Vec<_>>(),
        )
    };
    let refused = forbidden_edges(&[
        manifest("cellport-gateway", &[("dependencies", "cellport-api")]),
        manifest("cellport-core", &[("dependencies", "cellport-store")]),
        manifest("cellport-store", &[("dependencies", "cellport-testkit")]),
        manifest("cellport-api", &[("dependencies", "cellport-pipeline")]),
        manifest("cellport-new", &[("dependencies", "cellport-core")]),
        manifest(
            "cellport-worker",
            &[
                ("dependencies", "cellport-pipeline"),
                ("dev-dependencies", "cellport-testkit"),
            ],
        ),
    ]);
    assert_eq!(
        refused,
        [
            "cellport-gateway -> cellport-api (dependencies): a service depending on another service",
            "cellport-core -> cellport-store (dependencies): a crate depending on its own floor or above",
            "cellport-store -> cellport-testkit (dependencies): a dev-only crate outside dev-dependencies",
            "cellport-api -> cellport-pipeline (dependencies): an edge the architecture refuses",
            "cellport-new -> cellport-core (dependencies): a crate missing from the floors of tidy.rs",
        ]
    );
}

#[test]
fn the_web_apps_database_is_only_ever_read() {
    let (_, source) = crate_sources()
        .into_iter()
        .find(|(path, _)| path == "crates/cellport-io/src/postgres.rs")
        .expect("the database source");
    assert!(
        source.contains("default_transaction_read_only=on"),
        "every session of the database source is read-only"
    );
    let writes: Vec<&str> = source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .filter(|line| {
            let upper = line.to_ascii_uppercase();
            [
                "INSERT ",
                "UPDATE ",
                "DELETE ",
                "TRUNCATE ",
                "COPY ",
                "ALTER ",
                "CREATE ",
                "DROP ",
            ]
            .iter()
            .any(|verb| upper.contains(verb))
        })
        .collect();
    assert!(writes.is_empty(), "statements that write: {writes:?}");
}

/// Where in `text` a line touches the storage layout from outside the storage module: builds a
/// path or key under `archives/` or `staging/`, names a partial archive, or writes a file
/// through a path the storage handed out.
fn storage_layout_uses(text: &str) -> Vec<String> {
    const LAYOUT: &[&str] = &[
        "join(\"archives",
        "join(\"staging",
        "\"archives/",
        "\"staging/",
        ".zip.part",
        "Staging::path",
        "staging.path(",
        "Staging::temp_path",
    ];
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .filter(|line| LAYOUT.iter().any(|pattern| line.contains(pattern)))
        .map(|line| line.trim().to_owned())
        .collect()
}

#[test]
fn nothing_but_the_storage_module_opens_a_path_under_storage() {
    let storage_module = "crates/cellport-io/src/storage/";
    let mut outside = Vec::new();
    for (path, text) in crate_sources() {
        if path.starts_with(storage_module) {
            continue;
        }
        for line in storage_layout_uses(&text) {
            outside.push(format!("{path}: {line}"));
        }
    }
    assert!(
        outside.is_empty(),
        "storage is reached through cellport_io::Storage only (SPEC §11): {outside:#?}"
    );
    // The check sees what it should.
    assert_eq!(
        storage_layout_uses(
            "let p = data.join(\"staging\").join(id);\n// join(\"archives\") in a comment\nstd::fs::write(staging.path(&n), b)"
        ),
        [
            "let p = data.join(\"staging\").join(id);",
            "std::fs::write(staging.path(&n), b)"
        ]
    );
}
