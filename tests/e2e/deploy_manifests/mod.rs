//! The deployment files checked against the code, so that they cannot rot unnoticed:
//! `deploy/k8s` (every `CELLPORT_*` variable is a flag of the binary that receives it, the
//! listening addresses, ports and probe paths are the ones served, the KEDA trigger reads the
//! queue stream of `cellport-store`, a worker's termination grace covers its SIGTERM hand-back,
//! Redis keeps an AOF), and `deploy/grafana` and `deploy/prometheus` (every series a panel or
//! an alert reads is one that a running api, gateway or worker exposes on `/metrics`).
//! Each check is also shown refusing a broken input.
//!
//! What the code says is read in [`code`], the manifests in [`manifests`], the series of the
//! dashboard and the alerts in [`metrics`]; the tests are here.

mod code;
mod manifests;
mod metrics;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cellport_testkit::wait_until;
use serde_yaml_ng::Value as Yaml;

use crate::tidy::rust_files;

use self::code::{Code, clap_envs, duration_after, hand_back_bound, routed_paths};
use self::manifests::{kind, kustomization, manifest_problems, name, yaml_documents};
use self::metrics::{
    alert_rules, dashboard_exprs, empty_panels, exposed_series, promql_metric_names, series_used,
    unexposed,
};
use crate::support::{Stack, StackOptions};

/// The deployed binaries, the crate each is built from, and the variable of the address its
/// `/healthz`, `/readyz` and `/metrics` are served on.
const BINARIES: [(&str, &str, &str); 3] = [
    ("cellport-api", "cellport-api", "CELLPORT_API_ADDR"),
    (
        "cellport-gateway",
        "cellport-gateway",
        "CELLPORT_GATEWAY_ADDR",
    ),
    (
        "cellport-worker",
        "cellport-worker",
        "CELLPORT_WORKER_HEALTH_ADDR",
    ),
];

/// Settings that must be the same in every process that reads them: one Redis, one bucket,
/// one project source, one set of token rules.
const SHARED: [&str; 8] = [
    "CELLPORT_REDIS_URL",
    "CELLPORT_STORAGE_URL",
    "CELLPORT_PROJECT_SOURCE",
    "CELLPORT_UPLOADS_DIR",
    "CELLPORT_JWT_SECRET",
    "CELLPORT_JWT_USER_CLAIM",
    "CELLPORT_JWT_ISSUER",
    "CELLPORT_JWT_AUDIENCE",
];

/// What the dashboard must show (SPEC §13), as series names.
const DASHBOARD_SHOWS: [&str; 7] = [
    "cellport_queue_depth",
    "cellport_queue_oldest_age_seconds",
    "cellport_jobs",
    "cellport_job_duration_seconds_bucket",
    "cellport_workers_alive",
    "cellport_gateway_connections",
    "cellport_gateway_slow_closes_total",
];

/// What the alerts must watch (SPEC §13): queue age, live workers, failures, Redis.
const ALERTS_WATCH: [&str; 4] = [
    "cellport_queue_oldest_age_seconds",
    "cellport_workers_alive",
    "cellport_jobs",
    "cellport_redis_up",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The texts of a crate's sources.
fn crate_sources(krate: &str) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&root().join("crates").join(krate).join("src"), &mut files);
    files.sort();
    files
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect()
}

/// Runs a tool when it is installed: `None` when it is not (the caller says it was skipped).
fn run_if_installed(program: &str, args: &[&str]) -> Option<std::process::Output> {
    match std::process::Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
    {
        Ok(output) => Some(output),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("running {program}: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[test]
fn the_kubernetes_manifests_agree_with_the_code() {
    let code = Code::read();
    let (namespace, docs) = kustomization("deploy/k8s/base");
    let problems = manifest_problems(&docs, &namespace, &code);
    assert!(
        problems.is_empty(),
        "deploy/k8s/base:\n{}",
        problems.join("\n")
    );
    eprintln!(
        "queue stream {:?}, group {:?}; a worker's SIGTERM hand-back takes at most {} s",
        code.queue_stream,
        code.queue_group,
        code.hand_back.as_secs()
    );

    // The overlay patches only what the base has.
    let overlay = yaml_documents(&read("deploy/k8s/overlays/single-node/small.yaml"));
    for patch in &overlay {
        assert!(
            docs.iter()
                .any(|d| kind(d) == kind(patch) && name(d) == name(patch)),
            "the single-node overlay patches {} {}, which the base lacks",
            kind(patch),
            name(patch)
        );
    }

    // The docs name the stream and the group the way the code does.
    let readme = read("deploy/k8s/README.md");
    for command in [
        format!("XLEN {}", code.queue_stream),
        format!("XPENDING {} {}", code.queue_stream, code.queue_group),
    ] {
        assert!(
            readme.contains(&command),
            "deploy/k8s/README.md lacks `{command}`"
        );
    }
}

#[test]
fn the_kustomizations_render_and_agree_with_the_code_when_kubectl_is_installed() {
    let code = Code::read();
    let (namespace, _) = kustomization("deploy/k8s/base");
    for dir in ["deploy/k8s/base", "deploy/k8s/overlays/single-node"] {
        let Some(output) = run_if_installed("kubectl", &["kustomize", dir]) else {
            eprintln!("kubectl is not installed: rendering {dir} skipped");
            return;
        };
        assert!(
            output.status.success(),
            "kubectl kustomize {dir}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let rendered = yaml_documents(&String::from_utf8(output.stdout).unwrap());
        let problems = manifest_problems(&rendered, &namespace, &code);
        assert!(
            problems.is_empty(),
            "{dir} rendered:\n{}",
            problems.join("\n")
        );
        eprintln!(
            "kubectl kustomize {dir}: {} objects, all agree with the code",
            rendered.len()
        );
    }
}

#[test]
fn the_manifest_checks_refuse_what_they_should() {
    let code = Code::read();
    let (namespace, docs) = kustomization("deploy/k8s/base");
    let with = |kind_name: (&str, &str), change: &dyn Fn(&mut Yaml)| {
        let mut docs = docs.clone();
        let doc = docs
            .iter_mut()
            .find(|d| kind(d) == kind_name.0 && name(d) == kind_name.1)
            .expect("the document to change");
        change(doc);
        manifest_problems(&docs, &namespace, &code)
    };
    let set = |path: &[&str], value: Yaml| {
        let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
        move |doc: &mut Yaml| {
            let mut v = doc;
            for key in &path {
                v = match key.parse::<usize>() {
                    Ok(i) => &mut v[i],
                    Err(_) => &mut v[key.as_str()],
                };
            }
            *v = value.clone();
        }
    };
    let text = |s: &str| Yaml::String(s.to_owned());
    let container = ["spec", "template", "spec", "containers", "0"];
    let under = |rest: &[&'static str]| -> Vec<&'static str> {
        container
            .iter()
            .copied()
            .chain(rest.iter().copied())
            .collect()
    };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            with(
                ("ConfigMap", "cellport-api"),
                &set(&["data", "CELLPORT_API_ADDR"], text("127.0.0.1:8080")),
            ),
            vec!["Deployment cellport-api/api: CELLPORT_API_ADDR binds 127.0.0.1, out of reach"],
        ),
        (
            with(
                ("ConfigMap", "cellport-api"),
                &set(&["data", "CELLPORT_WORKER_CONCURRENCY"], text("4")),
            ),
            vec![
                "Deployment cellport-api/api: CELLPORT_WORKER_CONCURRENCY is no flag of cellport-api",
            ],
        ),
        (
            with(
                ("ConfigMap", "cellport-storage"),
                &set(&["data", "CELLPORT_NO_SUCH_SETTING"], text("https://x")),
            ),
            vec![
                "Deployment cellport-api/api: CELLPORT_NO_SUCH_SETTING is no flag of cellport-api",
                "Deployment cellport-worker/worker: CELLPORT_NO_SUCH_SETTING is no flag of cellport-worker",
                "ConfigMap cellport-storage: CELLPORT_NO_SUCH_SETTING is no flag of any binary",
            ],
        ),
        (
            with(
                ("Secret", "cellport-secrets"),
                &set(&["stringData", "CELLPORT_REDIS_PASSWORD"], text("x")),
            ),
            vec!["Secret cellport-secrets: CELLPORT_REDIS_PASSWORD is no flag of any binary"],
        ),
        (
            with(
                ("Deployment", "cellport-gateway"),
                &set(
                    &under(&["readinessProbe", "httpGet", "path"]),
                    text("/ready"),
                ),
            ),
            vec![
                "Deployment cellport-gateway/gateway: readinessProbe asks /ready, not /readyz",
                "Deployment cellport-gateway/gateway: readinessProbe asks /ready, which cellport-gateway does not serve",
            ],
        ),
        (
            with(
                ("Deployment", "cellport-worker"),
                &set(
                    &under(&["ports", "0", "containerPort"]),
                    Yaml::Number(9102.into()),
                ),
            ),
            vec![
                "Deployment cellport-worker/worker: listens on 8082 (CELLPORT_WORKER_HEALTH_ADDR) but declares ports [9102]",
                "Deployment cellport-worker/worker: livenessProbe goes to port Some(9102), not 8082",
                "Deployment cellport-worker/worker: readinessProbe goes to port Some(9102), not 8082",
                "Deployment cellport-worker/worker: Service cellport-worker sends to port Some(9102), not 8082",
            ],
        ),
        (
            with(
                ("Deployment", "cellport-worker"),
                &set(
                    &["spec", "template", "spec", "terminationGracePeriodSeconds"],
                    Yaml::Number(10.into()),
                ),
            ),
            vec![
                "Deployment cellport-worker/worker: terminationGracePeriodSeconds 10 does not cover the SIGTERM hand-back",
            ],
        ),
        (
            with(
                ("Deployment", "cellport-worker"),
                &set(&["spec", "replicas"], Yaml::Number(3.into())),
            ),
            vec!["Deployment cellport-worker sets replicas, which fights the HPA"],
        ),
        (
            with(
                ("ScaledObject", "cellport-worker"),
                &set(
                    &["spec", "triggers", "0", "metadata", "stream"],
                    text("cellport:jobs"),
                ),
            ),
            vec![
                "the KEDA trigger reads stream Some(\"cellport:jobs\"), the queue is \"cellport:queue\"",
            ],
        ),
        (
            with(
                ("ScaledObject", "cellport-worker"),
                &set(
                    &["spec", "triggers", "0", "metadata", "consumerGroup"],
                    text("workers"),
                ),
            ),
            vec![
                "the KEDA trigger sets consumerGroup: KEDA would scale on the group's pending entries or lag",
            ],
        ),
        (
            with(
                ("ScaledObject", "cellport-worker"),
                &set(
                    &["spec", "triggers", "0", "metadata", "streamLength"],
                    text("5"),
                ),
            ),
            vec!["the KEDA trigger's streamLength is Some(\"5\"), a worker runs 2 jobs at once"],
        ),
        (
            with(
                ("ScaledObject", "cellport-worker"),
                &set(
                    &["spec", "triggers", "0", "metadata", "address"],
                    text("cellport-redis:6379"),
                ),
            ),
            vec![
                "the KEDA trigger's address cellport-redis:6379 is not cellport-redis.cellport.svc…",
            ],
        ),
        (
            with(
                ("StatefulSet", "cellport-redis"),
                &set(
                    &under(&["args"]),
                    Yaml::Sequence(vec![text("--appendonly"), text("no")]),
                ),
            ),
            vec![
                "StatefulSet cellport-redis: Redis runs without --appendonly yes",
                "StatefulSet cellport-redis: Redis runs without --appendfsync everysec",
            ],
        ),
        (
            with(
                ("Deployment", "cellport-gateway"),
                &set(&under(&["envFrom"]), Yaml::Sequence(vec![])),
            ),
            vec![
                "Deployment cellport-gateway/gateway: CELLPORT_GATEWAY_ADDR is not set",
                "CELLPORT_JWT_USER_CLAIM differs between the processes that read it",
                "CELLPORT_JWT_ISSUER differs between the processes that read it",
                "CELLPORT_JWT_AUDIENCE differs between the processes that read it",
            ],
        ),
        (
            with(
                ("Deployment", "cellport-api"),
                &set(
                    &under(&["env", "0", "valueFrom", "secretKeyRef", "key"]),
                    text("REDIS_URL"),
                ),
            ),
            vec![
                "Deployment cellport-api/api: CELLPORT_REDIS_URL names a Secret key that is not there",
                "CELLPORT_REDIS_URL differs between the processes that read it",
            ],
        ),
    ];
    for (problems, expected) in cases {
        for wanted in &expected {
            assert!(
                problems.iter().any(|p| p.starts_with(wanted)),
                "expected a problem starting with {wanted:?}, got:\n{}",
                problems.join("\n")
            );
        }
        assert_eq!(problems.len(), expected.len(), "{}", problems.join("\n"));
    }
}

#[test]
fn the_source_readers_find_what_the_code_says() {
    let sources = [
        "pub struct Args {\n    #[command(flatten)]\n    redis: RedisArgs,\n    /// Where\n    #[arg(long, env = \"CELLPORT_X\", default_value = \"a\")]\n    x: String,\n    #[command(flatten)]\n    pub jwt: cellport_runtime::JwtArgs,\n}\n".to_owned(),
        "pub struct RedisArgs {\n    #[arg(\n        long,\n        env = \"CELLPORT_REDIS_URL\",\n    )]\n    pub redis_url: String,\n}\npub struct JwtArgs {\n    #[arg(long, env = \"CELLPORT_JWT_SECRET\")]\n    s: String,\n    #[command(flatten)]\n    rules: TokenRules,\n}\nstruct TokenRules { #[arg(env = \"CELLPORT_JWT_ISSUER\")] i: String }\n".to_owned(),
    ];
    assert_eq!(
        clap_envs("Args", &sources),
        [
            "CELLPORT_JWT_ISSUER",
            "CELLPORT_JWT_SECRET",
            "CELLPORT_REDIS_URL",
            "CELLPORT_X"
        ]
        .map(String::from)
        .into()
    );
    assert!(clap_envs("Missing", &sources).is_empty());
    assert_eq!(
        routed_paths(
            "Router::new().route(\"/healthz\", get(h))\n#[utoipa::path(get, path = \"/readyz\")]\nlet p = PathBuf::from(\"/tmp\");"
        ),
        ["/healthz", "/readyz"].map(String::from).into()
    );
    let lib = "let m = Monitor::new().shutdown_timeout(Duration::from_secs(8));";
    let health = "const STOP_WITHIN: Duration = Duration::from_millis(1_500);";
    let store = "pub const WORKER_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);";
    assert_eq!(
        hand_back_bound(lib, health, store),
        Duration::from_millis(14_500)
    );
    assert_eq!(duration_after(lib, "nothing here"), None);

    // The real code: the bound is what a grace period must beat, and the binaries read the
    // variables the deploy files lean on.
    let code = Code::read();
    assert!(
        code.hand_back >= Duration::from_secs(10),
        "{:?}",
        code.hand_back
    );
    assert!(code.envs["cellport-worker"].contains("CELLPORT_WORKER_HEALTH_ADDR"));
    assert!(code.envs["cellport-api"].contains("CELLPORT_REDIS_URL"));
    assert!(!code.envs["cellport-gateway"].contains("CELLPORT_DATA_DIR"));
    for (binary, _, _) in BINARIES {
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert!(
                code.routes[binary].contains(path),
                "{binary} does not route {path}"
            );
        }
    }
}

#[test]
fn the_dashboard_and_the_alerts_cover_what_they_should() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/cellport.json")).expect("the dashboard is JSON");
    assert_eq!(empty_panels(&dashboard), Vec::<String>::new());
    let (rules, problems) = alert_rules(&read("deploy/prometheus/alerts.yml"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let (on_dashboard, in_alerts) = series_used();
    for name in DASHBOARD_SHOWS {
        assert!(
            on_dashboard.contains(name),
            "the dashboard does not show {name}"
        );
    }
    for name in ALERTS_WATCH {
        assert!(in_alerts.contains(name), "no alert watches {name}");
    }
    eprintln!(
        "alerts: {}",
        rules
            .iter()
            .map(|(a, _)| a.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

#[test]
fn the_alert_rules_pass_promtool_when_it_is_installed() {
    match run_if_installed(
        "promtool",
        &["check", "rules", "deploy/prometheus/alerts.yml"],
    ) {
        None => eprintln!("promtool is not installed: `promtool check rules` skipped"),
        Some(output) => assert!(
            output.status.success(),
            "promtool check rules:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

#[test]
fn the_series_checks_refuse_what_they_should() {
    let names = |e: &str| -> Vec<String> { promql_metric_names(e).into_iter().collect() };
    assert_eq!(
        names(
            "histogram_quantile(0.99, sum by (le, route) (rate(cellport_http_request_duration_seconds_bucket{route!=\"/x\", status=~\"5..\"}[5m])))"
        ),
        ["cellport_http_request_duration_seconds_bucket"]
    );
    assert_eq!(
        names("max(a) == 0 and max(b) > 0 unless on(job) c offset 5m or bool d"),
        ["a", "b", "c", "d"]
    );
    assert_eq!(
        names(
            "sum without (pod) (rate(x_total[$__rate_interval])) / ignoring(le) group_left y * 1e3"
        ),
        ["x_total", "y"]
    );
    assert_eq!(names("absent(up) # a comment naming z\n"), ["up"]);

    let exposition = "# HELP foo Foo.\n# TYPE foo counter\nfoo_total 1\n# TYPE bar histogram\n# TYPE baz gauge\nbaz{a=\"b\"} 2\nqux_created 1\n# EOF\n";
    let exposed = exposed_series(exposition);
    let used: BTreeSet<String> = [
        "foo",
        "foo_total",
        "bar",
        "bar_bucket",
        "bar_count",
        "baz",
        "baz_total",
        "quux",
    ]
    .map(String::from)
    .into();
    assert_eq!(
        unexposed(&used, &exposed),
        ["bar", "baz_total", "foo", "quux"]
    );

    let rules = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        annotations:\n          runbook: do this\n      - alert: B\n        expr: up == 1\n        annotations:\n          summary: no runbook\n      - alert: C\n        expr: ''\n";
    let (parsed, problems) = alert_rules(rules);
    assert_eq!(
        parsed,
        [
            ("A".to_owned(), "up == 0".to_owned()),
            ("B".to_owned(), "up == 1".to_owned())
        ]
    );
    assert_eq!(
        problems,
        [
            "B: no runbook annotation",
            "C: no expr",
            "C: no runbook annotation"
        ]
    );

    let dashboard = serde_json::json!({"panels": [
        {"type": "row", "title": "r", "panels": [{"type": "stat", "title": "nested", "targets": [{"expr": "a"}]}]},
        {"type": "timeseries", "title": "blank", "targets": [{"expr": ""}]},
        {"type": "stat", "title": "none"},
    ]});
    assert_eq!(dashboard_exprs(&dashboard), ["a", ""]);
    let mut empty = empty_panels(&dashboard);
    empty.sort();
    assert_eq!(empty, ["blank", "none"]);
}

/// A loopback address nothing listens on (the worker binds it next).
fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_dashboard_and_the_alerts_read_is_exposed() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let health = free_addr()?;
    let mut worker = stack.spawn_worker_with_health("worker-scraped", "10s", "15s", health)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let ready = wait_until(Duration::from_secs(30), || async {
        http.get(format!("http://{health}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(ready, "the worker never got ready: {}", worker.log());
    // A request, so the api's per-instance HTTP series have samples too.
    http.get(stack.url("/healthz"))
        .send()
        .await?
        .error_for_status()?;

    let mut exposed = BTreeSet::new();
    for (service, url) in [
        ("api", stack.url("/metrics")),
        ("gateway", format!("http://{}/metrics", stack.gateway)),
        ("worker", format!("http://{health}/metrics")),
    ] {
        let response = http.get(&url).send().await?.error_for_status()?;
        let series = exposed_series(&response.text().await?);
        eprintln!(
            "{service} /metrics: {}",
            series.iter().cloned().collect::<Vec<_>>().join(" ")
        );
        exposed.extend(series);
    }

    let (on_dashboard, in_alerts) = series_used();
    eprintln!(
        "dashboard reads: {}",
        on_dashboard.iter().cloned().collect::<Vec<_>>().join(" ")
    );
    eprintln!(
        "alerts read: {}",
        in_alerts.iter().cloned().collect::<Vec<_>>().join(" ")
    );
    for (file, used) in [
        ("deploy/grafana/cellport.json", &on_dashboard),
        ("deploy/prometheus/alerts.yml", &in_alerts),
    ] {
        let missing = unexposed(used, &exposed);
        assert!(
            missing.is_empty(),
            "{file} reads series no service exposes: {missing:?}\nexposed: {exposed:?}"
        );
    }

    worker.signal("TERM")?;
    let exited = tokio::time::timeout(Duration::from_secs(15), worker.child.wait()).await;
    assert!(
        exited.is_ok_and(|status| status.is_ok_and(|s| s.success())),
        "the worker did not stop cleanly: {}",
        worker.log()
    );
    Ok(())
}
