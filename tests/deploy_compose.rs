//! The docker-compose stack agrees with the worker: mounts exist, worker configs parse, Prometheus
//! scrapes each worker's port, topics, queues and bindings match the configs, and the Grafana
//! dashboard uses only exported metrics.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::manifests::*;
use labelmill::config::WorkerConfig;
use labelmill::telemetry::http::{METRICS_PATH, READYZ_PATH};
use labelmill::telemetry::metrics::NAMES;
use serde_json::Value;

/// A compose service's volumes as (source, target): a host path (`./...`) or a named volume.
fn mounts(service: &Value) -> Vec<(&str, &str)> {
    list(&service["volumes"])
        .iter()
        .map(|v| match v.as_str() {
            Some(short) => {
                let mut parts = short.split(':');
                (
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                )
            }
            None => (str_of(&v["source"]), str_of(&v["target"])),
        })
        .collect()
}

/// The host file mounted at `target`.
fn mounted<'a>(service: &'a Value, target: &str) -> &'a str {
    mounts(service)
        .into_iter()
        .find(|(_, t)| *t == target)
        .unwrap_or_else(|| panic!("nothing is mounted at {target}"))
        .0
}

/// The compose services that run `labelmill worker`, with the config each runs.
fn compose_workers(compose: &Value) -> Vec<(&str, &Value, WorkerConfig)> {
    let services = compose["services"].as_object().expect("services");
    services
        .iter()
        .filter(|(_, s)| s["command"][0] == "worker")
        .map(|(name, s)| {
            let config = flag_value(&strings(&s["command"]), "--config");
            (name.as_str(), s, worker_config(mounted(s, config)))
        })
        .collect()
}

fn depends(service: &Value, on: &str, condition: &str) -> bool {
    service["depends_on"][on]["condition"] == condition
}

#[test]
fn compose_services_and_mounts_exist() {
    let compose = yaml(COMPOSE);
    assert!(
        compose.get("version").is_none(),
        "the Compose Specification has no version"
    );
    let services = compose["services"].as_object().expect("services");
    let named = |name: &str| {
        compose["volumes"]
            .as_object()
            .is_some_and(|v| v.contains_key(name))
    };
    for name in [
        "kafka",
        "kafka-topics",
        "rabbitmq",
        "model",
        "worker-kafka",
        "worker-amqp",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "no service {name}");
    }
    for (name, service) in services {
        for (source, _) in mounts(service) {
            if source.starts_with('.') || source.starts_with('/') {
                assert!(
                    Path::new(source).exists(),
                    "{name}: {source} does not exist"
                );
            } else {
                assert!(named(source), "{name}: volume {source} is not declared");
            }
        }
    }
}

#[test]
fn compose_workers_run_their_configs() {
    let compose = yaml(COMPOSE);
    let model = &compose["services"]["model"];
    let out = Path::new(flag_value(&strings(&model["command"]), "--out"));
    let (volume, _) = mounts(model)
        .into_iter()
        .find(|(_, t)| out.starts_with(t))
        .expect("tiny-model writes into a volume");
    let workers = compose_workers(&compose);
    let names: Vec<&str> = workers.iter().map(|w| w.0).collect();
    assert!(
        names.contains(&"worker-kafka") && names.contains(&"worker-amqp"),
        "{names:?}"
    );
    for (name, service, cfg) in &workers {
        assert_eq!(
            service["image"], model["image"],
            "{name} runs the image `model` builds"
        );
        assert!(
            depends(service, "model", "service_completed_successfully"),
            "{name}"
        );
        // The model is the one tiny-model writes, read from the volume it writes into.
        assert_eq!(cfg.model.model, out.join("model.gguf"), "{name}");
        // The tokenizer is the one the GGUF carries.
        assert_eq!(cfg.model.tokenizer, None, "{name}");
        assert!(
            mounts(service)
                .iter()
                .any(|(s, t)| *s == volume && cfg.model.model.starts_with(t)),
            "{name} does not mount {volume} over its model"
        );
        assert_tasks_defined(
            mounted(service, cfg.model.tasks.to_str().expect("UTF-8")),
            cfg,
        );

        let port = cfg.http.listen.port();
        let published = list(&service["ports"])
            .iter()
            .filter_map(|p| p.as_str()?.rsplit(':').next()?.parse::<u16>().ok())
            .any(|p| p == port);
        assert!(published, "{name} does not publish {port}");
        let health = strings(&service["healthcheck"]["test"]).join(" ");
        assert!(
            health.contains(&format!(":{port}{READYZ_PATH}")),
            "{name}: {health}"
        );
        let grace = humantime::parse_duration(str_of(&service["stop_grace_period"]))
            .unwrap_or_else(|e| panic!("{name}: stop_grace_period: {e}"));
        assert!(
            grace > cfg.shutdown.drain_deadline,
            "{name}: the drain outlasts the grace period"
        );
    }
}

#[test]
fn prometheus_scrapes_each_compose_worker() {
    let compose = yaml(COMPOSE);
    let config = mounted(
        &compose["services"]["prometheus"],
        "/etc/prometheus/prometheus.yml",
    );
    let prometheus = yaml(config);
    let job = list(&prometheus["scrape_configs"])
        .iter()
        .find(|j| j["job_name"] == "labelmill")
        .expect("a labelmill scrape job");
    assert_eq!(
        job["metrics_path"].as_str().unwrap_or(METRICS_PATH),
        METRICS_PATH
    );
    let targets: BTreeSet<String> = list(&job["static_configs"])
        .iter()
        .flat_map(|s| strings(&s["targets"]))
        .map(str::to_string)
        .collect();
    let workers: BTreeSet<String> = compose_workers(&compose)
        .iter()
        .map(|(name, _, cfg)| format!("{name}:{}", cfg.http.listen.port()))
        .collect();
    assert_eq!(targets, workers);
}

#[test]
fn compose_creates_every_kafka_topic_the_worker_uses() {
    let compose = yaml(COMPOSE);
    let worker = &compose["services"]["worker-kafka"];
    assert!(depends(
        worker,
        "kafka-topics",
        "service_completed_successfully"
    ));
    let cfg = worker_config(mounted(worker, "/etc/labelmill/worker.toml"));
    let kafka = cfg.kafka.as_ref().expect("worker-kafka reads Kafka");
    let setup = &compose["services"]["kafka-topics"];
    let words: Vec<&str> = strings(&setup["command"])
        .into_iter()
        .flat_map(str::split_whitespace)
        .collect();
    let created: BTreeSet<&str> = words
        .windows(2)
        .filter(|w| w[0] == "--topic")
        .map(|w| w[1])
        .collect();
    let mut used: Vec<&str> = kafka.inputs.iter().map(|i| i.topic.as_str()).collect();
    used.extend([
        kafka.results_topic.as_str(),
        kafka.dead_letter_topic.as_str(),
    ]);
    used.extend(kafka.escalate_topic.as_deref());
    for topic in used {
        assert!(
            created.contains(topic),
            "{topic} is not created: {created:?}"
        );
    }
    let advertised =
        str_of(&compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]);
    assert!(
        advertised.contains(&kafka.brokers),
        "{advertised} vs {}",
        kafka.brokers
    );
}

#[test]
fn rabbitmq_definitions_declare_what_the_worker_uses() {
    let compose = yaml(COMPOSE);
    let worker = &compose["services"]["worker-amqp"];
    assert!(depends(worker, "rabbitmq", "service_healthy"));
    let cfg = worker_config(mounted(worker, "/etc/labelmill/worker.toml"));
    let amqp = cfg.amqp.as_ref().expect("worker-amqp reads RabbitMQ");
    let rabbitmq = &compose["services"]["rabbitmq"];
    let conf = mounts(rabbitmq)
        .into_iter()
        .find(|(_, t)| t.starts_with("/etc/rabbitmq/") && t.ends_with(".conf"))
        .expect("a rabbitmq.conf is mounted");
    let defs_at = read(conf.0)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.split_once('=')?;
            key.trim()
                .ends_with("load_definitions")
                .then(|| value.trim().to_string())
        })
        .expect("rabbitmq.conf loads definitions");
    let defs: Value = serde_json::from_str(&read(mounted(rabbitmq, &defs_at))).unwrap();

    let queues: BTreeSet<&str> = list(&defs["queues"])
        .iter()
        .map(|q| str_of(&q["name"]))
        .collect();
    for input in &amqp.inputs {
        assert!(
            queues.contains(input.queue.as_str()),
            "queue {} is not declared",
            input.queue
        );
    }
    let exchange = list(&defs["exchanges"])
        .iter()
        .find(|e| e["name"] == amqp.exchange.as_str())
        .unwrap_or_else(|| panic!("exchange {} is not declared", amqp.exchange));
    assert_eq!(exchange["type"], "direct");
    let mut keys = vec![
        amqp.results_routing_key.as_str(),
        amqp.dead_letter_routing_key.as_str(),
    ];
    keys.extend(amqp.escalate_routing_key.as_deref());
    for key in keys {
        let bound = list(&defs["bindings"]).iter().any(|b| {
            b["source"] == amqp.exchange.as_str()
                && b["routing_key"] == key
                && b["destination_type"] == "queue"
                && queues.contains(str_of(&b["destination"]))
        });
        assert!(bound, "nothing receives routing key {key}");
    }
    // The worker logs in as a user the definitions create (guest may not log in from elsewhere).
    let user = amqp
        .uri
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split(':').next())
        .expect("the URI names a user");
    assert!(
        list(&defs["users"]).iter().any(|u| u["name"] == user),
        "no user {user}"
    );
    assert!(list(&defs["permissions"])
        .iter()
        .any(|p| p["user"] == user && p["vhost"] == "/"));
}

#[test]
fn the_dashboard_shows_exported_metrics() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "labelmill");
    let sources = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let source = list(&sources["datasources"])
        .iter()
        .find(|d| d["type"] == "prometheus")
        .expect("a Prometheus data source");
    let mut panels: Vec<&Value> = Vec::new();
    for p in list(&dashboard["panels"]) {
        panels.push(p);
        panels.extend(list(&p["panels"])); // a collapsed row's panels
    }
    let mut ids = BTreeSet::new();
    let mut shown = BTreeSet::new();
    for p in panels {
        let id = p["id"].as_u64().expect("a numeric panel id");
        assert!(ids.insert(id), "panel id {id} is used twice");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], source["uid"],
            "panel {}",
            p["title"]
        );
        let targets = list(&p["targets"]);
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for expr in targets.iter().map(|t| str_of(&t["expr"])) {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr}");
            for n in names {
                let metric = exported(&n).unwrap_or_else(|| panic!("{n} is not exported: {expr}"));
                shown.insert(metric);
            }
        }
    }
    for required in [
        "labelmill_documents_total",
        "labelmill_batch_documents",
        "labelmill_document_latency_seconds",
        "labelmill_consumer_lag_messages",
        "labelmill_backlog_seconds",
        "labelmill_dead_letters_total",
        "labelmill_escalations_total",
    ] {
        assert!(NAMES.contains(&required), "{required} is not exported");
        assert!(
            shown.contains(required),
            "the dashboard does not show {required}"
        );
    }

    // Grafana loads it from the folder its provider reads, where compose mounts this file's folder.
    let provider = yaml("deploy/grafana/provisioning/dashboards/labelmill.yml");
    let folder = str_of(&provider["providers"][0]["options"]["path"]);
    let compose = yaml(COMPOSE);
    let mounted_folder = mounted(&compose["services"]["grafana"], folder);
    let file = Path::new(DASHBOARD).file_name().expect("a file name");
    assert!(
        Path::new(mounted_folder).join(file).exists(),
        "{mounted_folder} is not the dashboards folder"
    );
}
