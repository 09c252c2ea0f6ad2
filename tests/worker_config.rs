//! The worker's configuration: the documented example parses, `labelmill config check` applies
//! environment overrides, redacts secrets and refuses what is wrong.

mod common;

use std::process::Command;

use common::worker::Setup;

#[test]
fn the_example_config_is_valid() {
    let text = std::fs::read_to_string("examples/worker.toml").unwrap();
    let cfg =
        labelmill::config::WorkerConfig::parse(&text, "examples/worker.toml", Vec::new()).unwrap();
    assert!(cfg.kafka.is_some() && cfg.amqp.is_some());
    assert_eq!(cfg.routing.escalate_below["ticket"], 0.6);
}

fn check(cfg: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labelmill"));
    cmd.args(["config", "check", "--config"]).arg(cfg);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn config_check_applies_overrides_and_redacts_secrets() {
    let setup = Setup::new();
    let cfg = setup.config(
        "w.toml",
        r#"
[kafka]
brokers = "127.0.0.1:9092"
inputs = [{ topic = "docs", task = "ticket" }]
results_topic = "results"
dead_letter_topic = "dead"
properties = { "security.protocol" = "SASL_SSL", "sasl.mechanism" = "SCRAM-SHA-512", "sasl.username" = "svc" }

[amqp]
uri = "amqps://svc:amqp-secret@rabbit:5671/%2f"
inputs = [{ queue = "docs" }]
results_routing_key = "results"
dead_letter_routing_key = "dead"
"#,
    );
    let out = check(
        &cfg,
        &[
            ("LABELMILL_KAFKA__PROPERTIES__SASL_PASSWORD", "hunter2"),
            ("LABELMILL_BATCHING__MAX_WAIT", "15ms"),
            ("LABELMILL_KAFKA__BROKERS", "kafka-0:9093"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(r#"max_wait = "15ms""#), "{stdout}");
    assert!(stdout.contains(r#"brokers = "kafka-0:9093""#), "{stdout}");
    assert!(stdout.contains(r#""sasl.password" = "****""#), "{stdout}");
    assert!(
        stdout.contains("amqps://svc:****@rabbit:5671/%2f"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("hunter2") && !stdout.contains("amqp-secret"),
        "{stdout}"
    );
    assert!(stderr.contains("configuration is valid"), "{stderr}");
}

#[test]
fn config_check_refuses_bad_configs() {
    let setup = Setup::new();
    let body = r#"
[amqp]
uri = "amqp://127.0.0.1"
inputs = [{ queue = "docs", task = "no-such-task" }]
results_routing_key = "results"
dead_letter_routing_key = "dead"
"#;
    let cfg = setup.config("w.toml", body);
    let out = check(&cfg, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-task"));
    let cfg = setup.config("ok.toml", &body.replace("no-such-task", "ticket"));
    assert!(check(&cfg, &[]).status.success());
    // A variable that names no field is an error, not silently ignored.
    let out = check(&cfg, &[("LABELMILL_BATCHING__MAX_WIAT", "1s")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_wiat"));
    // Overrides are type-checked like the file.
    let out = check(&cfg, &[("LABELMILL_AMQP__PREFETCH", "-1")]);
    assert!(!out.status.success(), "a negative prefetch is refused");
}

/// Secrets planted in the file and in the environment appear in no output of `config check`,
/// whether the configuration is valid or refused (here for a password with a raw `/`, which the
/// AMQP parser rejects with a message that quotes the URI).
#[test]
fn no_secret_reaches_the_output_of_config_check() {
    let setup = Setup::new();
    let body = r#"
[kafka]
brokers = "127.0.0.1:9092"
inputs = [{ topic = "docs", task = "ticket" }]
results_topic = "results"
dead_letter_topic = "dead"
properties = { "security.protocol" = "SSL", "ssl.key.pem" = "-----BEGIN PRIVATE KEY-----planted-pem", "sasl.oauthbearer.client.secret" = "planted-oauth" }
producer_properties = { "ssl.keystore.password" = "planted-store" }

[amqp]
uri = "amqps://svc:planted%2Furi-pw@rabbit:5671/%2f"
inputs = [{ queue = "docs" }]
results_routing_key = "results"
dead_letter_routing_key = "dead"
"#;
    let env = [
        (
            "LABELMILL_KAFKA__PROPERTIES__SSL_KEY_PASSWORD",
            "planted-env-key",
        ),
        (
            "LABELMILL_KAFKA__CONSUMER_PROPERTIES__SASL_PASSWORD",
            "planted-env-sasl",
        ),
    ];
    let planted = [
        "planted-pem",
        "planted-oauth",
        "planted-store",
        "uri-pw",
        "planted-env-key",
        "planted-env-sasl",
    ];
    let valid = setup.config("valid.toml", body);
    let broken = setup.config(
        "broken.toml",
        &body.replace("planted%2Furi-pw", "planted/uri-pw"),
    );
    for (cfg, ok) in [(valid, true), (broken, false)] {
        let out = check(&cfg, &env);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), ok, "{all}");
        for secret in planted {
            assert!(!all.contains(secret), "'{secret}' in the output: {all}");
        }
        if !ok {
            assert!(
                all.contains("amqp.uri"),
                "the refusal names the setting: {all}"
            );
        }
    }
}
