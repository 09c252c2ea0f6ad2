//! The Kubernetes and KEDA manifests agree with the worker: every file parses, kustomizations name
//! files that exist, probes hit the real endpoints on the configured port, the grace period covers
//! the drain, and the scalers watch the configured topic, group, queue and exported metrics.

mod common;

use std::path::{Path, PathBuf};

use common::manifests::*;
use labelmill::config::{Lane, WorkerConfig};
use labelmill::telemetry::http::{HEALTHZ_PATH, METRICS_PATH, READYZ_PATH};
use serde_json::Value;

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
    // The tokenizer is the one the GGUF carries: nothing else to stage.
    assert_eq!(cfg.model.tokenizer, None);
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
