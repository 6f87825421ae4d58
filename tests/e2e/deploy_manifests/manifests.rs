//! The Kubernetes manifests of `deploy/k8s` read as YAML and checked against the code: the
//! variables each container gets, its addresses, ports, probes and Services, the KEDA trigger of
//! the worker, and the Redis that keeps an AOF.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde_yaml_ng::Value as Yaml;

use super::code::Code;
use super::{BINARIES, SHARED, read};

/// The documents of a multi-document YAML text (empty ones left out).
pub(super) fn yaml_documents(text: &str) -> Vec<Yaml> {
    let mut documents = Vec::new();
    let mut current = String::new();
    let mut flush = |current: &mut String| {
        let doc: Yaml =
            serde_yaml_ng::from_str(current).unwrap_or_else(|e| panic!("{e}:\n{current}"));
        if !doc.is_null() {
            documents.push(doc);
        }
        current.clear();
    };
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            flush(&mut current);
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current);
    documents
}

/// `value` at a path of mapping keys.
fn at<'a>(value: &'a Yaml, path: &[&str]) -> Option<&'a Yaml> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

pub(super) fn str_at<'a>(value: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    at(value, path)?.as_str()
}

pub(super) fn seq_at<'a>(value: &'a Yaml, path: &[&str]) -> &'a [Yaml] {
    at(value, path)
        .and_then(Yaml::as_sequence)
        .map_or(&[], |s| s.as_slice())
}

/// A mapping of strings (labels, ConfigMap data) as a map; other values are left out.
fn string_map(value: Option<&Yaml>) -> BTreeMap<String, String> {
    value
        .and_then(Yaml::as_mapping)
        .into_iter()
        .flat_map(|m| m.iter())
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), scalar(v)?)))
        .collect()
}

/// A scalar as text (`"8080"`, `8080` and `true` alike).
fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(super) fn kind(doc: &Yaml) -> &str {
    str_at(doc, &["kind"]).unwrap_or("")
}

pub(super) fn name(doc: &Yaml) -> &str {
    str_at(doc, &["metadata", "name"]).unwrap_or("")
}

/// The base's namespace and documents, read as its kustomization lists them.
pub(super) fn kustomization(dir: &str) -> (String, Vec<Yaml>) {
    let file = yaml_documents(&read(&format!("{dir}/kustomization.yaml")));
    let file = &file[0];
    let namespace = str_at(file, &["namespace"]).unwrap_or("default").to_owned();
    let mut docs = Vec::new();
    for resource in seq_at(file, &["resources"]) {
        let resource = resource.as_str().unwrap();
        docs.extend(yaml_documents(&read(&format!("{dir}/{resource}"))));
    }
    (namespace, docs)
}

/// Where a variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Setting {
    Value(String),
    Secret { name: String, key: String },
}

/// One container of a workload, with what it runs and the variables it gets.
struct Container<'a> {
    workload: &'a Yaml,
    spec: &'a Yaml,
    label: String,
    binary: Option<&'static str>,
    env: BTreeMap<String, Setting>,
}

fn containers<'a>(docs: &'a [Yaml], problems: &mut Vec<String>) -> Vec<Container<'a>> {
    let config_maps: BTreeMap<&str, BTreeMap<String, String>> = docs
        .iter()
        .filter(|d| kind(d) == "ConfigMap")
        .map(|d| (name(d), string_map(d.get("data"))))
        .collect();
    let secrets: BTreeMap<&str, BTreeSet<String>> = docs
        .iter()
        .filter(|d| kind(d) == "Secret")
        .map(|d| {
            let mut keys: BTreeSet<String> = string_map(d.get("stringData")).into_keys().collect();
            keys.extend(string_map(d.get("data")).into_keys());
            (name(d), keys)
        })
        .collect();
    let mut found = Vec::new();
    for workload in docs
        .iter()
        .filter(|d| matches!(kind(d), "Deployment" | "StatefulSet"))
    {
        for spec in seq_at(workload, &["spec", "template", "spec", "containers"]) {
            let label = format!(
                "{} {}/{}",
                kind(workload),
                name(workload),
                str_at(spec, &["name"]).unwrap_or("?")
            );
            let binary = seq_at(spec, &["command"])
                .first()
                .and_then(Yaml::as_str)
                .and_then(|c| BINARIES.iter().find(|(b, _, _)| *b == c))
                .map(|(b, _, _)| *b);
            let mut env = BTreeMap::new();
            for from in seq_at(spec, &["envFrom"]) {
                if let Some(map) = str_at(from, &["configMapRef", "name"]) {
                    match config_maps.get(map) {
                        Some(data) => env.extend(
                            data.iter()
                                .map(|(k, v)| (k.clone(), Setting::Value(v.clone()))),
                        ),
                        None => problems.push(format!("{label}: no ConfigMap {map}")),
                    }
                }
                if let Some(secret) = str_at(from, &["secretRef", "name"]) {
                    match secrets.get(secret) {
                        Some(keys) => env.extend(keys.iter().map(|k| {
                            let setting = Setting::Secret {
                                name: secret.to_owned(),
                                key: k.clone(),
                            };
                            (k.clone(), setting)
                        })),
                        None => problems.push(format!("{label}: no Secret {secret}")),
                    }
                }
            }
            for var in seq_at(spec, &["env"]) {
                let Some(var_name) = str_at(var, &["name"]) else {
                    continue;
                };
                let setting = if let Some(value) = var.get("value") {
                    scalar(value).map(Setting::Value)
                } else if let Some(r) = at(var, &["valueFrom", "secretKeyRef"]) {
                    let (secret, key) = (str_at(r, &["name"]), str_at(r, &["key"]));
                    match (secret, key) {
                        (Some(secret), Some(key))
                            if secrets.get(secret).is_some_and(|keys| keys.contains(key)) =>
                        {
                            Some(Setting::Secret {
                                name: secret.to_owned(),
                                key: key.to_owned(),
                            })
                        }
                        _ => {
                            problems.push(format!(
                                "{label}: {var_name} names a Secret key that is not there ({secret:?}/{key:?})"
                            ));
                            None
                        }
                    }
                } else if let Some(r) = at(var, &["valueFrom", "configMapKeyRef"]) {
                    let value = str_at(r, &["name"])
                        .and_then(|map| config_maps.get(map))
                        .and_then(|data| data.get(str_at(r, &["key"])?));
                    if value.is_none() {
                        problems.push(format!(
                            "{label}: {var_name} names a ConfigMap key that is not there"
                        ));
                    }
                    value.cloned().map(Setting::Value)
                } else {
                    None
                };
                if let Some(setting) = setting {
                    env.insert(var_name.to_owned(), setting);
                }
            }
            found.push(Container {
                workload,
                spec,
                label,
                binary,
                env,
            });
        }
    }
    found
}

/// Whether `selector` (matchLabels, or a Service's plain selector) picks pods labelled `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A probe's or a Service's port (a number, or the name of one of the container's ports).
fn port_number(port: Option<&Yaml>, container: &Yaml) -> Option<u16> {
    let port = port?;
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).ok();
    }
    let wanted = port.as_str()?;
    if let Ok(n) = wanted.parse() {
        return Some(n);
    }
    seq_at(container, &["ports"])
        .iter()
        .find(|p| str_at(p, &["name"]) == Some(wanted))
        .and_then(|p| at(p, &["containerPort"])?.as_u64())
        .and_then(|n| u16::try_from(n).ok())
}

/// Everything in the manifests that disagrees with the code, as readable lines.
pub(super) fn manifest_problems(docs: &[Yaml], namespace: &str, code: &Code) -> Vec<String> {
    let mut problems = Vec::new();
    let containers = containers(docs, &mut problems);
    let services: Vec<&Yaml> = docs.iter().filter(|d| kind(d) == "Service").collect();
    let budgets: Vec<&Yaml> = docs
        .iter()
        .filter(|d| kind(d) == "PodDisruptionBudget")
        .collect();

    for c in &containers {
        let label = &c.label;
        for var in c.env.keys().filter(|v| v.starts_with("CELLPORT_")) {
            match c.binary {
                None => problems.push(format!("{label}: sets {var} but runs no Cellport binary")),
                Some(binary) if !code.envs[binary].contains(var) => {
                    problems.push(format!("{label}: {var} is no flag of {binary}"))
                }
                Some(_) => {}
            }
        }
        for side in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                if at(c.spec, &["resources", side, resource]).is_none() {
                    problems.push(format!("{label}: no {resource} in resources.{side}"));
                }
            }
        }
        let Some(binary) = c.binary else {
            continue;
        };
        let (_, _, addr_var) = BINARIES.iter().find(|(b, _, _)| *b == binary).unwrap();
        if !code.envs[binary].contains(*addr_var) {
            problems.push(format!("{binary} no longer reads {addr_var}"));
        }
        let addr = match c.env.get(*addr_var) {
            Some(Setting::Value(v)) => match v.parse::<SocketAddr>() {
                Ok(addr) => addr,
                Err(_) => {
                    problems.push(format!("{label}: {addr_var}={v} is no socket address"));
                    continue;
                }
            },
            _ => {
                problems.push(format!(
                    "{label}: {addr_var} is not set (the default listens on loopback only)"
                ));
                continue;
            }
        };
        if !addr.ip().is_unspecified() {
            problems.push(format!(
                "{label}: {addr_var} binds {}, out of reach of the kubelet's probes and the Service",
                addr.ip()
            ));
        }
        let port = addr.port();
        let container_ports: Vec<u16> = seq_at(c.spec, &["ports"])
            .iter()
            .filter_map(|p| at(p, &["containerPort"])?.as_u64())
            .filter_map(|n| u16::try_from(n).ok())
            .collect();
        if !container_ports.contains(&port) {
            problems.push(format!(
                "{label}: listens on {port} ({addr_var}) but declares ports {container_ports:?}"
            ));
        }
        let served = &code.routes[binary];
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let Some(get) = at(c.spec, &[probe, "httpGet"]) else {
                problems.push(format!("{label}: no {probe} over HTTP"));
                continue;
            };
            let probe_path = str_at(get, &["path"]).unwrap_or("");
            if probe_path != path {
                problems.push(format!("{label}: {probe} asks {probe_path}, not {path}"));
            }
            if !served.contains(probe_path) {
                problems.push(format!(
                    "{label}: {probe} asks {probe_path}, which {binary} does not serve"
                ));
            }
            let probe_port = port_number(get.get("port"), c.spec);
            if probe_port != Some(port) {
                problems.push(format!(
                    "{label}: {probe} goes to port {probe_port:?}, not {port}"
                ));
            }
        }
        let pod = at(c.workload, &["spec", "template", "metadata"]);
        let annotations = string_map(pod.and_then(|m| m.get("annotations")));
        if annotations.get("prometheus.io/port") != Some(&port.to_string()) {
            problems.push(format!(
                "{label}: prometheus.io/port is {:?}, not {port}",
                annotations.get("prometheus.io/port")
            ));
        }
        match annotations.get("prometheus.io/path") {
            Some(path) if served.contains(path) => {}
            other => problems.push(format!(
                "{label}: prometheus.io/path {other:?} is not served by {binary}"
            )),
        }
        let labels = string_map(pod.and_then(|m| m.get("labels")));
        let mut exposed = false;
        for service in &services {
            if !selects(&string_map(at(service, &["spec", "selector"])), &labels) {
                continue;
            }
            exposed = true;
            for p in seq_at(service, &["spec", "ports"]) {
                let target = p.get("targetPort").or_else(|| p.get("port"));
                let target_port = port_number(target, c.spec);
                if target_port != Some(port) {
                    problems.push(format!(
                        "{label}: Service {} sends to port {target_port:?}, not {port}",
                        name(service)
                    ));
                }
            }
        }
        if !exposed {
            problems.push(format!("{label}: no Service selects it"));
        }
        if !budgets.iter().any(|b| {
            selects(
                &string_map(at(b, &["spec", "selector", "matchLabels"])),
                &labels,
            )
        }) {
            problems.push(format!("{label}: no PodDisruptionBudget covers it"));
        }
        if binary == "cellport-worker" {
            let grace = at(
                c.workload,
                &["spec", "template", "spec", "terminationGracePeriodSeconds"],
            )
            .and_then(Yaml::as_u64)
            .unwrap_or(30);
            if Duration::from_secs(grace) <= code.hand_back {
                problems.push(format!(
                    "{label}: terminationGracePeriodSeconds {grace} does not cover the SIGTERM hand-back ({} s)",
                    code.hand_back.as_secs()
                ));
            }
        }
    }

    for (binary, _, _) in BINARIES {
        if !containers.iter().any(|c| c.binary == Some(binary)) {
            problems.push(format!("nothing runs {binary}"));
        }
    }

    // Settings no container receives are checked too: some binary must read each.
    let every_flag: BTreeSet<&String> = code.envs.values().flatten().collect();
    for doc in docs
        .iter()
        .filter(|d| matches!(kind(d), "ConfigMap" | "Secret"))
    {
        let mut keys = string_map(doc.get("data"));
        keys.extend(string_map(doc.get("stringData")));
        for var in keys.keys().filter(|k| k.starts_with("CELLPORT_")) {
            if !every_flag.contains(var) {
                problems.push(format!(
                    "{} {}: {var} is no flag of any binary",
                    kind(doc),
                    name(doc)
                ));
            }
        }
    }

    // One Redis, one bucket, one project source, one set of token rules.
    for var in SHARED {
        let readers: Vec<&Container> = containers
            .iter()
            .filter(|c| c.binary.is_some_and(|b| code.envs[b].contains(var)))
            .collect();
        let settings: BTreeSet<String> = readers
            .iter()
            .map(|c| format!("{:?}", c.env.get(var)))
            .collect();
        if settings.len() > 1 {
            let each: Vec<String> = readers
                .iter()
                .map(|c| format!("{}: {:?}", c.label, c.env.get(var)))
                .collect();
            problems.push(format!(
                "{var} differs between the processes that read it: {}",
                each.join("; ")
            ));
        }
    }

    problems.extend(keda_problems(docs, namespace, &containers, code));
    problems.extend(redis_problems(docs));
    problems
}

/// The worker's ScaledObject: the queue stream, scaled on its length, one target per worker's
/// concurrency, the self-hosted Redis by its full name.
fn keda_problems(
    docs: &[Yaml],
    namespace: &str,
    containers: &[Container],
    code: &Code,
) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(worker) = containers
        .iter()
        .find(|c| c.binary == Some("cellport-worker"))
    else {
        return problems;
    };
    let deployment = name(worker.workload);
    if at(worker.workload, &["spec", "replicas"]).is_some() {
        problems.push(format!(
            "Deployment {deployment} sets replicas, which fights the HPA of its ScaledObject"
        ));
    }
    let scaled: Vec<&Yaml> = docs
        .iter()
        .filter(|d| kind(d) == "ScaledObject")
        .filter(|d| str_at(d, &["spec", "scaleTargetRef", "name"]) == Some(deployment))
        .collect();
    let [scaled] = scaled.as_slice() else {
        problems.push(format!(
            "{} ScaledObjects scale {deployment}, not one",
            scaled.len()
        ));
        return problems;
    };
    let triggers: Vec<&Yaml> = seq_at(scaled, &["spec", "triggers"])
        .iter()
        .filter(|t| str_at(t, &["type"]) == Some("redis-streams"))
        .collect();
    let [trigger] = triggers.as_slice() else {
        problems.push(format!(
            "{} redis-streams triggers, not one",
            triggers.len()
        ));
        return problems;
    };
    let meta = string_map(trigger.get("metadata"));
    if meta.get("stream") != Some(&code.queue_stream) {
        problems.push(format!(
            "the KEDA trigger reads stream {:?}, the queue is {:?}",
            meta.get("stream"),
            code.queue_stream
        ));
    }
    for other_mode in ["consumerGroup", "pendingEntriesCount", "lagCount"] {
        if meta.contains_key(other_mode) {
            problems.push(format!(
                "the KEDA trigger sets {other_mode}: KEDA would scale on the group's pending entries or lag, not on the stream's length"
            ));
        }
    }
    let concurrency = match worker.env.get("CELLPORT_WORKER_CONCURRENCY") {
        Some(Setting::Value(v)) => v.clone(),
        _ => "2".to_owned(),
    };
    if meta.get("streamLength") != Some(&concurrency) {
        problems.push(format!(
            "the KEDA trigger's streamLength is {:?}, a worker runs {concurrency} jobs at once",
            meta.get("streamLength")
        ));
    }
    if let Some(address) = meta.get("address")
        && let Some((host, port)) = address.rsplit_once(':')
    {
        let service = host.split('.').next().unwrap_or(host);
        if let Some(service_doc) = docs
            .iter()
            .find(|d| kind(d) == "Service" && name(d) == service)
        {
            let expected = format!("{service}.{namespace}.svc");
            if !host.starts_with(&expected) {
                problems.push(format!(
                    "the KEDA trigger's address {address} is not {expected}…: KEDA's operator runs in its own namespace"
                ));
            }
            let ports: Vec<String> = seq_at(service_doc, &["spec", "ports"])
                .iter()
                .filter_map(|p| scalar(p.get("port")?))
                .collect();
            if !ports.iter().any(|p| p == port) {
                problems.push(format!(
                    "the KEDA trigger's port {port} is not one of Service {service}'s {ports:?}"
                ));
            }
        }
    }
    problems
}

/// A self-hosted Redis keeps an append-only file, fsynced every second, on a claim.
fn redis_problems(docs: &[Yaml]) -> Vec<String> {
    let mut problems = Vec::new();
    for set in docs.iter().filter(|d| kind(d) == "StatefulSet") {
        for container in seq_at(set, &["spec", "template", "spec", "containers"]) {
            let image = str_at(container, &["image"]).unwrap_or("");
            if !image.starts_with("redis") {
                continue;
            }
            let args: Vec<String> = seq_at(container, &["args"])
                .iter()
                .filter_map(scalar)
                .collect();
            let args = args.join(" ");
            for wanted in ["--appendonly yes", "--appendfsync everysec"] {
                if !args.contains(wanted) {
                    problems.push(format!(
                        "StatefulSet {}: Redis runs without {wanted}",
                        name(set)
                    ));
                }
            }
            if seq_at(set, &["spec", "volumeClaimTemplates"]).is_empty() {
                problems.push(format!(
                    "StatefulSet {}: Redis keeps its AOF on no claim",
                    name(set)
                ));
            }
        }
    }
    problems
}
