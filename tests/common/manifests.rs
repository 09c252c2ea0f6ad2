//! Helpers for the deployment-file tests: reading YAML/JSON/TOML manifests and the values in them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use labelmill::config::WorkerConfig;
use labelmill::task::TaskFile;
use labelmill::telemetry::metrics::NAMES;
use serde_json::Value;

pub const COMPOSE: &str = "docker-compose.yml";
pub const K8S_CONFIG: &str = "k8s/base/worker.toml";
pub const DASHBOARD: &str = "deploy/grafana/dashboards/labelmill.json";

pub fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A YAML file of one document.
pub fn yaml(path: &str) -> Value {
    serde_saphyr::from_str::<Value>(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A worker config file, validated as the worker does (no environment overrides).
pub fn worker_config(path: &str) -> WorkerConfig {
    WorkerConfig::parse(&read(path), path, std::iter::empty::<(String, String)>())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The items of a sequence (none when absent).
pub fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The strings of a sequence.
pub fn strings(v: &Value) -> Vec<&str> {
    list(v).iter().filter_map(Value::as_str).collect()
}

pub fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// A number written as a YAML number or a string ("6", "256").
pub fn number(v: &Value) -> f64 {
    v.as_f64()
        .or_else(|| v.as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The argument after `flag`.
pub fn flag_value<'a>(args: &[&'a str], flag: &str) -> &'a str {
    args.windows(2)
        .find(|w| w[0] == flag)
        .map(|w| w[1])
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"))
}

pub fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a readable directory entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Every `labelmill_*` series named in a PromQL expression.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("labelmill_") {
        let glued = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !glued {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// The exported metric a series belongs to (a histogram's `_bucket`, `_sum` and `_count` too).
pub fn exported(series: &str) -> Option<&'static str> {
    NAMES.iter().copied().find(|name| {
        series == *name
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| series.strip_suffix(suffix) == Some(*name))
    })
}

/// Every task a config names (input defaults, escalation thresholds) is defined in `tasks`.
pub fn assert_tasks_defined(tasks: &str, cfg: &WorkerConfig) {
    let file = TaskFile::load(Path::new(tasks)).unwrap_or_else(|e| panic!("{tasks}: {e}"));
    let defined: BTreeSet<&str> = file.task.iter().map(|t| t.name.as_str()).collect();
    let mut named: Vec<&str> = cfg
        .routing
        .escalate_below
        .keys()
        .map(String::as_str)
        .collect();
    if let Some(k) = &cfg.kafka {
        named.extend(k.inputs.iter().filter_map(|i| i.task.as_deref()));
    }
    if let Some(a) = &cfg.amqp {
        named.extend(a.inputs.iter().filter_map(|i| i.task.as_deref()));
    }
    for task in named {
        assert!(
            defined.contains(task),
            "task {task} is not defined in {tasks}"
        );
    }
}
