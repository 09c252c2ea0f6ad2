//! `labelmill worker` reaching RabbitMQ through a proxy the test controls (tests/common/proxy.rs):
//! publisher confirms that stop arriving, and mutual TLS. The proxy forwards to the server at
//! 127.0.0.1:5672 that .ci/run starts; only the worker's own connections pass through it, so
//! stalling them does not disturb other tests.

mod common;

use std::time::{Duration, Instant};

use common::proxy::{Pki, Proxy};
use common::rabbit::{Rabbit, URI};
use common::worker::{good_docs, http_get, metric, result_ids, tally, Setup, WorkerProc};

/// The publishing connection stalls (the broker's confirms stop reaching the worker) for three
/// seconds, with `confirm_timeout = 500ms`: the publish times out, its channel is closed (the
/// proxy sees the worker's Channel.Close), the publish is retried on a fresh channel, and every
/// document is labelled with nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_timeout_closes_its_channel_and_the_publish_is_retried() {
    let setup = Setup::new();
    let r = Rabbit::new("lm-confirm").await;
    let proxy = Proxy::start(None).await;
    let via = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let extra = "confirm_timeout = \"500ms\"\npublish_channels = 2";
    let cfg = setup.config("w.toml", &r.config("results", extra).replace(URI, &via));
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("w.log"));
    let docs = good_docs(20);
    let payloads: Vec<Vec<u8>> = docs.iter().map(|d| d.1.clone()).collect();
    // The first ten open the publishing connection.
    r.publish(&payloads[..10]).await;
    let mut got = r
        .collect("results", 10, Duration::ZERO, Duration::from_secs(120))
        .await;
    let publishers = |p: &Proxy| p.connections().into_iter().filter(|c| c.is_publisher());
    assert_eq!(publishers(&proxy).count(), 1, "{:?}", proxy.connections());
    proxy.stall_publisher(true);
    r.publish(&payloads[10..]).await;
    let start = Instant::now();
    while !w.log_text().contains("in time") {
        assert!(
            // Well under the 30 s default: the configured time-out is the one that fires.
            start.elapsed() < Duration::from_secs(15),
            "no confirm timeout: {}",
            w.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.stall_publisher(false);
    let rest = r
        .collect(
            "results",
            10,
            Duration::from_secs(2),
            Duration::from_secs(120),
        )
        .await;
    got.extend(rest);
    let sent: Vec<String> = docs.iter().map(|d| d.0.clone()).collect();
    let t = tally(&sent, &result_ids(&got));
    eprintln!("confirm timeout: {t:?}");
    assert!(t.lost.is_empty() && t.unexpected.is_empty(), "{t:?}");
    // A timed-out publish may have reached the broker: its retry is a duplicate, at most one each.
    assert!(t.duplicates <= 10, "{t:?}");
    let closes: Vec<String> = publishers(&proxy).flat_map(|c| c.channel_closes).collect();
    assert!(
        closes.iter().any(|c| c.contains("confirm timed out")),
        "the timed-out channel was not closed: {closes:?}"
    );
    let (_, text) = http_get(w.http_addr(), "/metrics");
    assert!(metric(&text, "labelmill_retries_total", &[("kind", "publish")]) >= 1.0);
    assert!(w.sigterm(Duration::from_secs(60)).success());
    assert_eq!(
        r.depth("dead").await,
        0,
        "nothing dead-lettered for a stall"
    );
    assert_eq!(r.depth("input").await, 0, "every delivery acked");
}

/// `amqps://` with `amqp.tls`: the worker trusts the test CA from `ca_file` (the system's store
/// does not hold it) and presents its client certificate; the proxy demands one. Without the
/// client certificate the handshake is refused and the worker keeps retrying, not ready, taking
/// nothing from the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_labels_with_the_client_certificate_and_is_refused_without() {
    let setup = Setup::new();
    let pki = Pki::new(setup.dir.path());
    let r = Rabbit::new("lm-mtls").await;
    let proxy = Proxy::start(Some(pki.acceptor)).await;
    let via = format!("amqps://guest:guest@localhost:{}/%2f", proxy.port);
    let tls = |with_cert: bool| {
        let mut t = format!("ca_file = {:?}", pki.ca);
        if with_cert {
            t += &format!(
                ", cert_file = {:?}, key_file = {:?}",
                pki.client_cert, pki.client_key
            );
        }
        format!("reconnect_delay = \"200ms\"\ntls = {{ {t} }}")
    };
    let docs = good_docs(12);
    let payloads: Vec<Vec<u8>> = docs.iter().map(|d| d.1.clone()).collect();
    r.publish(&payloads[..4]).await;

    // Without a client certificate: refused, not ready, nothing consumed.
    let cfg = setup.config(
        "no-cert.toml",
        &r.config("results", &tls(false)).replace(URI, &via),
    );
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("no-cert.log"));
    let start = Instant::now();
    while !proxy.connections().iter().any(|c| c.tls_error.is_some()) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            w.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.wait_for_log("reconnecting", Duration::from_secs(60));
    let (status, body) = http_get(w.http_addr(), "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(proxy.connections().iter().all(|c| c.client_cn.is_none()));
    w.kill9();
    assert_eq!(r.depth("input").await, 4, "nothing consumed without TLS");

    // With it: the documents are labelled, every connection made with the client certificate.
    let cfg = setup.config(
        "mtls.toml",
        &r.config("results", &tls(true)).replace(URI, &via),
    );
    let mut w = WorkerProc::start(&cfg, &setup.dir.path().join("mtls.log"));
    r.publish(&payloads[4..]).await;
    let got = r
        .collect(
            "results",
            12,
            Duration::from_secs(1),
            Duration::from_secs(120),
        )
        .await;
    let t = tally(
        &docs.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
        &result_ids(&got),
    );
    assert!(t.lost.is_empty() && t.unexpected.is_empty(), "{t:?}");
    assert_eq!(t.duplicates, 0);
    let verified: Vec<_> = proxy
        .connections()
        .into_iter()
        .filter(|c| c.client_cn.as_deref() == Some("labelmill-test-client"))
        .collect();
    assert!(
        verified.iter().any(|c| c.is_publisher())
            && verified
                .iter()
                .any(|c| c.start_ok.contains("labelmill consumer")),
        "{:?}",
        proxy.connections()
    );
    assert!(w.sigterm(Duration::from_secs(60)).success());
    assert_eq!(r.depth("input").await, 0, "every delivery acked");
}
