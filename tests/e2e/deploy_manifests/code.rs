//! What the code says that the deployment files must agree with, read from the Rust sources:
//! the variables each binary's clap arguments read, the paths it routes, the queue's stream
//! and group, and how long a worker takes from SIGTERM to its exit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{BINARIES, crate_sources, read};

/// The facts of the code the manifests must agree with.
pub(super) struct Code {
    /// Binary → the variables its clap arguments read (`env = "…"`).
    pub(super) envs: BTreeMap<String, BTreeSet<String>>,
    /// Binary → the HTTP paths its crate routes.
    pub(super) routes: BTreeMap<String, BTreeSet<String>>,
    pub(super) queue_stream: String,
    pub(super) queue_group: String,
    /// How long a worker may take from SIGTERM to its exit, handing its jobs back.
    pub(super) hand_back: Duration,
}

impl Code {
    pub(super) fn read() -> Code {
        let runtime = crate_sources("cellport-runtime");
        let mut envs = BTreeMap::new();
        let mut routes = BTreeMap::new();
        for (binary, krate, _) in BINARIES {
            let mut sources = vec![read(&format!("crates/{krate}/src/cli.rs"))];
            sources.extend(runtime.iter().cloned());
            envs.insert(binary.to_owned(), clap_envs("Args", &sources));
            let mut served = BTreeSet::new();
            for text in crate_sources(krate) {
                served.extend(routed_paths(&text));
            }
            routes.insert(binary.to_owned(), served);
        }
        let keys = read("crates/cellport-store/src/keys.rs");
        Code {
            envs,
            routes,
            queue_stream: const_str(&keys, "QUEUE_STREAM"),
            queue_group: const_str(&keys, "QUEUE_GROUP"),
            hand_back: hand_back_bound(
                &read("crates/cellport-worker/src/lib.rs"),
                &read("crates/cellport-worker/src/health.rs"),
                &read("crates/cellport-store/src/lib.rs"),
            ),
        }
    }
}

/// The body of `struct name { … }` in one of `sources`.
fn struct_body<'a>(name: &str, sources: &'a [String]) -> Option<&'a str> {
    sources.iter().find_map(|text| {
        let start = text.find(&format!("struct {name} {{"))?;
        let open = start + text[start..].find('{')?;
        let mut depth = 0;
        for (at, c) in text[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(&text[open + 1..open + at]);
                    }
                }
                _ => {}
            }
        }
        None
    })
}

/// Every `env = "…"` that the clap struct `name` reads, its `#[command(flatten)]` fields'
/// structs included (looked up in `sources`).
pub(super) fn clap_envs(name: &str, sources: &[String]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let Some(body) = struct_body(name, sources) else {
        return found;
    };
    for (at, _) in body.match_indices("env = \"") {
        let rest = &body[at + "env = \"".len()..];
        if let Some(end) = rest.find('"') {
            found.insert(rest[..end].to_owned());
        }
    }
    let mut lines = body.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if !line.starts_with("#[command(flatten)]") {
            continue;
        }
        let field = lines.find(|l| !l.starts_with("#[") && !l.starts_with("//"));
        let flattened = field
            .and_then(|l| l.split_once(':'))
            .map(|(_, ty)| ty.trim().trim_end_matches(','))
            .map(|ty| ty.rsplit("::").next().unwrap_or(ty).to_owned());
        if let Some(ty) = flattened {
            found.extend(clap_envs(&ty, sources));
        }
    }
    found
}

/// The paths a source file routes: axum's `.route("…"` and utoipa's `path = "…"`.
pub(super) fn routed_paths(text: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for marker in [".route(\"", "path = \""] {
        for (at, _) in text.match_indices(marker) {
            let rest = &text[at + marker.len()..];
            if let Some(end) = rest.find('"')
                && rest.starts_with('/')
            {
                paths.insert(rest[..end].to_owned());
            }
        }
    }
    paths
}

/// The value of `const NAME: &str = "…";`.
fn const_str(text: &str, name: &str) -> String {
    let marker = format!("{name}: &str = \"");
    let at = text
        .find(&marker)
        .unwrap_or_else(|| panic!("no `{marker}` in the source"));
    let rest = &text[at + marker.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// The first `Duration::from_secs(N)` / `from_millis(N)` after `anchor`.
pub(super) fn duration_after(text: &str, anchor: &str) -> Option<Duration> {
    let rest = &text[text.find(anchor)? + anchor.len()..];
    let rest = &rest[rest.find("Duration::from_")? + "Duration::from_".len()..];
    let (unit, rest) = rest.split_once('(')?;
    let number: u64 = rest[..rest.find(')')?]
        .trim()
        .replace('_', "")
        .parse()
        .ok()?;
    match unit {
        "secs" => Some(Duration::from_secs(number)),
        "millis" => Some(Duration::from_millis(number)),
        _ => None,
    }
}

/// From SIGTERM to exit, at most: the monitor waits `shutdown_timeout` for the jobs to stop and
/// be handed back, the health server then gets `STOP_WITHIN`, and the connections' last
/// commands are each bounded by `WORKER_COMMAND_TIMEOUT`.
pub(super) fn hand_back_bound(worker_lib: &str, worker_health: &str, store_lib: &str) -> Duration {
    let part = |text: &str, anchor: &str| {
        duration_after(text, anchor).unwrap_or_else(|| panic!("no Duration after `{anchor}`"))
    };
    part(worker_lib, ".shutdown_timeout(")
        + part(worker_health, "const STOP_WITHIN: Duration =")
        + part(store_lib, "const WORKER_COMMAND_TIMEOUT: Duration =")
}
