//! The series the Grafana dashboard and the Prometheus alerts read: metric names picked out of
//! PromQL, the series a `/metrics` text exposes, and the readers of the dashboard's panels and
//! the alert rules.

use std::collections::BTreeSet;

use serde_yaml_ng::Value as Yaml;

use super::manifests::{seq_at, str_at};
use super::read;

/// Metric names a PromQL expression reads: identifiers that are not functions, aggregations,
/// keywords, label names (in `{…}` or `by (…)`) or durations. Grafana's `$variables` are skipped.
pub(super) fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const WORDS: [&str; 24] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "limitk",
        "limit_ratio",
        "start",
        "end",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_string = |i: usize| -> usize {
        let quote = chars[i];
        let mut j = i + 1;
        while j < chars.len() && chars[j] != quote {
            j += if chars[j] == '\\' { 2 } else { 1 };
        }
        j + 1
    };
    let skip_until = |mut j: usize, close: char| -> usize {
        while j < chars.len() && chars[j] != close {
            j = if matches!(chars[j], '"' | '\'' | '`') {
                skip_string(j)
            } else {
                j + 1
            };
        }
        j + 1
    };
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(i);
        } else if c == '{' {
            i = skip_until(i + 1, '}');
        } else if c == '[' {
            i = skip_until(i + 1, ']');
        } else if c == '#' {
            i = skip_until(i + 1, '\n');
        } else if c.is_ascii_digit() || c == '.' || c == '$' {
            i += 1;
            while i < chars.len() && (word(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && word(chars[i]) {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let followed_by_paren = chars.get(next) == Some(&'(');
            let lower = ident.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if followed_by_paren {
                    i = skip_until(next + 1, ')');
                }
            } else if !followed_by_paren && !WORDS.contains(&lower.as_str()) {
                names.insert(ident);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The series names an OpenMetrics / Prometheus text exposes: every sample's name, and for each
/// declared family the names its samples take (`_total` of a counter, `_bucket`, `_sum` and
/// `_count` of a histogram), so that a family with no sample yet counts too.
pub(super) fn exposed_series(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut parts = declared.split_whitespace();
            let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "gaugehistogram" => &["_bucket", "_gsum", "_gcount"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// The names of `used` that `exposed` lacks.
pub(super) fn unexposed(used: &BTreeSet<String>, exposed: &BTreeSet<String>) -> Vec<String> {
    used.difference(exposed).cloned().collect()
}

/// Every `expr` of the Grafana dashboard (panels nested in rows included).
pub(super) fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let mut found = Vec::new();
    fn walk(v: &serde_json::Value, found: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                    found.push(expr.clone());
                }
                map.values().for_each(|v| walk(v, found));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    walk(dashboard, &mut found);
    found
}

/// Panels that query nothing (rows aside).
pub(super) fn empty_panels(dashboard: &serde_json::Value) -> Vec<String> {
    let mut empty = Vec::new();
    let mut stack: Vec<&serde_json::Value> = vec![dashboard];
    while let Some(v) = stack.pop() {
        for panel in v["panels"].as_array().into_iter().flatten() {
            stack.push(panel);
            let is_row = panel["type"] == "row";
            let queries = panel["targets"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty()))
            });
            if !is_row && !queries {
                empty.push(panel["title"].as_str().unwrap_or("?").to_owned());
            }
        }
    }
    empty
}

/// The alert rules as (name, expression), and the problems of the file: a rule without a
/// `runbook` annotation, or without an expression.
pub(super) fn alert_rules(text: &str) -> (Vec<(String, String)>, Vec<String>) {
    let file: Yaml = serde_yaml_ng::from_str(text).expect("alert rules are YAML");
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    for group in seq_at(&file, &["groups"]) {
        for rule in seq_at(group, &["rules"]) {
            let alert = str_at(rule, &["alert"]).or_else(|| str_at(rule, &["record"]));
            let alert = alert.unwrap_or("?").to_owned();
            match str_at(rule, &["expr"]) {
                Some(expr) if !expr.trim().is_empty() => {
                    rules.push((alert.clone(), expr.to_owned()))
                }
                _ => problems.push(format!("{alert}: no expr")),
            }
            if rule.get("alert").is_some()
                && str_at(rule, &["annotations", "runbook"]).is_none_or(|r| r.trim().is_empty())
            {
                problems.push(format!("{alert}: no runbook annotation"));
            }
        }
    }
    if rules.is_empty() {
        problems.push("no rules".to_owned());
    }
    (rules, problems)
}

/// The series names the dashboard and the alert rules read.
pub(super) fn series_used() -> (BTreeSet<String>, BTreeSet<String>) {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/cellport.json")).expect("the dashboard is JSON");
    let on_dashboard = dashboard_exprs(&dashboard)
        .iter()
        .flat_map(|e| promql_metric_names(e))
        .collect();
    let (rules, _) = alert_rules(&read("deploy/prometheus/alerts.yml"));
    let in_alerts = rules
        .iter()
        .flat_map(|(_, e)| promql_metric_names(e))
        .collect();
    (on_dashboard, in_alerts)
}
