//! The deployment files (docker-compose, Kubernetes, KEDA, Prometheus, Grafana) agree with the
//! worker and with each other: configs parse; ports, probe paths, topics, queues and metric names
//! match.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use labelmill::config::{Lane, WorkerConfig};
use labelmill::task::TaskFile;
use labelmill::telemetry::http::{HEALTHZ_PATH, METRICS_PATH, READYZ_PATH};
use labelmill::telemetry::metrics::NAMES;
use serde_json::Value;

const COMPOSE: &str = "docker-compose.yml";
const K8S_CONFIG: &str = "k8s/base/worker.toml";
const DASHBOARD: &str = "deploy/grafana/dashboards/labelmill.json";

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A YAML file of one document.
fn yaml(path: &str) -> Value {
    serde_saphyr::from_str::<Value>(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A worker config file, validated as the worker does (no environment overrides).
fn worker_config(path: &str) -> WorkerConfig {
    WorkerConfig::parse(&read(path), path, std::iter::empty::<(String, String)>())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The items of a sequence (none when absent).
fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The strings of a sequence.
fn strings(v: &Value) -> Vec<&str> {
    list(v).iter().filter_map(Value::as_str).collect()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// A number written as a YAML number or a string ("6", "256").
fn number(v: &Value) -> f64 {
    v.as_f64()
        .or_else(|| v.as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The argument after `flag`.
fn flag_value<'a>(args: &[&'a str], flag: &str) -> &'a str {
    args.windows(2)
        .find(|w| w[0] == flag)
        .map(|w| w[1])
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
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
fn metric_names(expr: &str) -> BTreeSet<String> {
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
fn exported(series: &str) -> Option<&'static str> {
    NAMES.iter().copied().find(|name| {
        series == *name
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| series.strip_suffix(suffix) == Some(*name))
    })
}

/// Every task a config names (input defaults, escalation thresholds) is defined in `tasks`.
fn assert_tasks_defined(tasks: &str, cfg: &WorkerConfig) {
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

#[test]
fn every_yaml_and_json_file_parses() {
    let mut files = vec![PathBuf::from(COMPOSE)];
    files_under(Path::new("k8s"), &mut files);
    files_under(Path::new("deploy"), &mut files);
    let mut yamls = 0;
    for path in &files {
        let ext = path.extension().and_then(|e| e.to_str());
        if !matches!(ext, Some("yaml" | "yml" | "json")) {
            continue;
        }
        let text = read(path);
        match ext {
            Some("yaml" | "yml") => {
                let docs = serde_saphyr::from_multiple::<Value>(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(
                    !docs.is_empty() && docs.iter().all(Value::is_object),
                    "{}: expected mappings",
                    path.display()
                );
                yamls += 1;
            }
            Some("json") => {
                serde_json::from_str::<Value>(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            _ => {}
        }
    }
    assert!(yamls >= 15, "only {yamls} YAML files found");
}

#[test]
fn kustomizations_name_files_that_exist() {
    let mut files = Vec::new();
    files_under(Path::new("k8s"), &mut files);
    let kustomizations: Vec<_> = files
        .iter()
        .filter(|p| p.ends_with("kustomization.yaml"))
        .collect();
    assert!(kustomizations.len() >= 6, "{kustomizations:?}");
    for k in kustomizations {
        let dir = k.parent().expect("a file has a directory");
        let doc = yaml(k.to_str().expect("a UTF-8 path"));
        let mut named = strings(&doc["resources"]);
        named.extend(strings(&doc["components"]));
        named.extend(
            list(&doc["patches"])
                .iter()
                .filter_map(|p| p["path"].as_str()),
        );
        for generator in list(&doc["configMapGenerator"]) {
            // `key=path` or a plain path.
            named.extend(
                strings(&generator["files"])
                    .iter()
                    .map(|f| f.split_once('=').map_or(*f, |(_, p)| p)),
            );
        }
        assert!(!named.is_empty(), "{} names nothing", k.display());
        for n in named {
            assert!(dir.join(n).exists(), "{}: {n} does not exist", k.display());
        }
    }
}

/// The container named `name` of a pod spec.
fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    list(&pod["containers"])
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// A probe's or Service's port: a number, or the name of one of the container's ports.
fn port_number(container: &Value, port: &Value) -> u16 {
    let number = match port.as_str() {
        Some(name) => list(&container["ports"])
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
            .as_u64(),
        None => port.as_u64(),
    };
    number
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or_else(|| panic!("not a port: {port}"))
}

/// Whether every label of a (non-empty) selector is on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

#[test]
fn the_deployment_matches_the_worker_config() {
    let cfg = worker_config(K8S_CONFIG);
    let port = cfg.http.listen.port();
    let deployment = yaml("k8s/base/deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let worker = container(pod, "worker");

    for (probe, path) in [
        ("livenessProbe", HEALTHZ_PATH),
        ("readinessProbe", READYZ_PATH),
        ("startupProbe", HEALTHZ_PATH),
    ] {
        let get = &worker[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(port_number(worker, &get["port"]), port, "{probe}");
    }

    let service = yaml("k8s/base/service.yaml");
    let ports = list(&service["spec"]["ports"]);
    assert!(!ports.is_empty());
    for p in ports {
        assert_eq!(
            port_number(worker, &p["targetPort"]),
            port,
            "Service targetPort"
        );
    }
    let scrape = &service["metadata"]["annotations"];
    assert_eq!(str_of(&scrape["prometheus.io/port"]), port.to_string());
    assert_eq!(scrape["prometheus.io/path"], METRICS_PATH);
    let pdb = yaml("k8s/base/pdb.yaml");
    for (what, selector) in [
        ("Deployment", &deployment["spec"]["selector"]["matchLabels"]),
        ("Service", &service["spec"]["selector"]),
        (
            "PodDisruptionBudget",
            &pdb["spec"]["selector"]["matchLabels"],
        ),
    ] {
        assert!(
            selects(selector, labels),
            "the {what} selector misses the pods"
        );
    }

    // The kubelet's grace period runs from the start of preStop: it must cover preStop + drain.
    let grace = number(&pod["terminationGracePeriodSeconds"]);
    let pre_stop: f64 = strings(&worker["lifecycle"]["preStop"]["exec"]["command"])
        .last()
        .and_then(|c| c.split_whitespace().next_back()?.parse().ok())
        .expect("preStop ends in `sleep N`");
    let drain = cfg.shutdown.drain_deadline.as_secs_f64();
    assert!(
        grace > drain + pre_stop,
        "terminationGracePeriodSeconds {grace} <= drain_deadline {drain} + preStop {pre_stop}"
    );

    // The ConfigMap is mounted where --config points, and holds the config and its tasks.
    let config = Path::new(flag_value(&strings(&worker["args"]), "--config"));
    let mounts = list(&worker["volumeMounts"]);
    let mount_at = |dir: &Path| {
        mounts
            .iter()
            .find(|m| Path::new(str_of(&m["mountPath"])) == dir)
            .unwrap_or_else(|| panic!("nothing is mounted at {}", dir.display()))
    };
    let volume = |name: &Value| {
        list(&pod["volumes"])
            .iter()
            .find(|v| &v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let config_dir = config.parent().expect("--config is a file path");
    let config_volume = volume(&mount_at(config_dir)["name"]);
    let kustomization = yaml("k8s/base/kustomization.yaml");
    let generator = list(&kustomization["configMapGenerator"])
        .iter()
        .find(|g| g["name"] == config_volume["configMap"]["name"])
        .expect("the config volume is the generated ConfigMap");
    let keys = strings(&generator["files"]);
    for file in [config, cfg.model.tasks.as_path()] {
        assert_eq!(file.parent(), Some(config_dir), "{}", file.display());
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a file name");
        assert!(
            keys.contains(&name),
            "the ConfigMap has no {name}: {keys:?}"
        );
    }
    assert_tasks_defined("k8s/base/tasks.toml", &cfg);

    // The model volume is the PVC, mounted read-only over the model files.
    let pvc = yaml("k8s/base/pvc.yaml");
    let models = mounts
        .iter()
        .find(|m| cfg.model.model.starts_with(str_of(&m["mountPath"])))
        .expect("the model file is on a mounted volume");
    assert!(cfg
        .model
        .tokenizer
        .starts_with(str_of(&models["mountPath"])));
    assert_eq!(models["readOnly"], true);
    let claim = &volume(&models["name"])["persistentVolumeClaim"]["claimName"];
    assert_eq!(claim, &pvc["metadata"]["name"]);
    assert!(strings(&pvc["spec"]["accessModes"]).contains(&"ReadOnlyMany"));
}

#[test]
fn the_gpu_overlay_asks_for_a_gpu() {
    let overlay = yaml("k8s/overlays/gpu/kustomization.yaml");
    assert!(list(&overlay["images"])
        .iter()
        .any(|i| i["newTag"] == "cuda"));
    let patch = list(&overlay["patches"])
        .iter()
        .find_map(|p| p["path"].as_str())
        .expect("the overlay patches the Deployment");
    let patch = yaml(&format!("k8s/overlays/gpu/{patch}"));
    let base = yaml("k8s/base/deployment.yaml");
    assert_eq!(patch["metadata"]["name"], base["metadata"]["name"]);
    let worker = container(&patch["spec"]["template"]["spec"], "worker");
    for side in ["requests", "limits"] {
        assert!(
            number(&worker["resources"][side]["nvidia.com/gpu"]) >= 1.0,
            "{side}"
        );
    }
}

/// A ScaledObject's single trigger, checked to be of `kind`; the target is the worker Deployment.
fn trigger<'a>(scaled: &'a Value, kind: &str) -> &'a Value {
    let deployment = yaml("k8s/base/deployment.yaml");
    let spec = &scaled["spec"];
    assert_eq!(
        spec["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert!(number(&spec["minReplicaCount"]) >= 1.0);
    assert!(number(&spec["maxReplicaCount"]) >= number(&spec["minReplicaCount"]));
    let triggers = list(&spec["triggers"]);
    assert_eq!(triggers.len(), 1, "one trigger");
    assert_eq!(triggers[0]["type"], kind);
    &triggers[0]
}

#[test]
fn keda_kafka_scales_on_the_live_input_within_its_partitions() {
    let cfg = worker_config(K8S_CONFIG);
    let kafka = cfg.kafka.as_ref().expect("the base worker reads Kafka");
    let scaled = yaml("k8s/components/keda-kafka/scaledobject.yaml");
    let partitions = number(&scaled["metadata"]["annotations"]["labelmill.dev/input-partitions"]);
    // Replicas past the partition count would get no partition: they would idle.
    assert!(number(&scaled["spec"]["maxReplicaCount"]) <= partitions);
    let meta = &trigger(&scaled, "kafka")["metadata"];
    assert!(
        kafka
            .inputs
            .iter()
            .any(|i| i.lane == Lane::Live && meta["topic"] == i.topic.as_str()),
        "{} is not a live input",
        meta["topic"]
    );
    assert_eq!(meta["consumerGroup"], kafka.group_id.as_str());
    assert_eq!(meta["bootstrapServers"], kafka.brokers.as_str());
    assert_eq!(meta["allowIdleConsumers"], "false");
}

#[test]
fn keda_rabbitmq_counts_unacknowledged_deliveries_of_the_live_queue() {
    let dir = "k8s/components/keda-rabbitmq";
    let docs = serde_saphyr::from_multiple::<Value>(&read(format!("{dir}/scaledobject.yaml")))
        .expect("the ScaledObject file parses");
    let of_kind = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let t = trigger(of_kind("ScaledObject"), "rabbitmq");
    let meta = &t["metadata"];
    assert_eq!(meta["mode"], "QueueLength");
    assert_eq!(meta["protocol"], "http");
    assert_eq!(meta["excludeUnacknowledged"], "false");
    let auth = of_kind("TriggerAuthentication");
    assert_eq!(t["authenticationRef"]["name"], auth["metadata"]["name"]);
    let host = list(&auth["spec"]["secretTargetRef"])
        .iter()
        .find(|r| r["parameter"] == "host")
        .expect("the management URI comes from a Secret");
    assert_eq!(host["key"], "management-uri");

    // The component's worker config (with the URI override its patch sets) reads that queue.
    let component = yaml(&format!("{dir}/kustomization.yaml"));
    let file = list(&component["configMapGenerator"])
        .iter()
        .flat_map(|g| strings(&g["files"]))
        .find_map(|f| f.strip_prefix("worker.toml="))
        .expect("the component replaces worker.toml");
    let patch = yaml(&format!("{dir}/amqp-uri.yaml"));
    let env = &container(&patch["spec"]["template"]["spec"], "worker")["env"];
    let vars: Vec<(String, String)> = list(env)
        .iter()
        .map(|e| {
            assert_eq!(e["valueFrom"]["secretKeyRef"]["name"], host["name"]);
            let uri = "amqp://labelmill:secret@rabbitmq:5672/%2f";
            (str_of(&e["name"]).to_string(), uri.to_string())
        })
        .collect();
    let path = format!("{dir}/{file}");
    let cfg =
        WorkerConfig::parse(&read(&path), &path, vars).unwrap_or_else(|e| panic!("{path}: {e}"));
    let amqp = cfg
        .amqp
        .as_ref()
        .expect("the component's worker reads RabbitMQ");
    assert!(amqp.uri.contains("secret"), "the Secret overrides amqp.uri");
    assert!(
        amqp.inputs
            .iter()
            .any(|i| i.lane == Lane::Live && meta["queueName"] == i.queue.as_str()),
        "{} is not a live input",
        meta["queueName"]
    );
}

#[test]
fn keda_prometheus_queries_exported_metrics() {
    let scaled = yaml("k8s/components/keda-prometheus/scaledobject.yaml");
    let t = trigger(&scaled, "prometheus");
    assert_eq!(t["metricType"], "AverageValue");
    assert!(number(&t["metadata"]["threshold"]) > 0.0);
    let query = str_of(&t["metadata"]["query"]);
    let names = metric_names(query);
    assert!(!names.is_empty(), "{query}");
    for n in names {
        assert!(exported(&n).is_some(), "{n} is not an exported metric");
    }
}

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
        assert_eq!(cfg.model.tokenizer, out.join("tokenizer.json"), "{name}");
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
