//! Opening RabbitMQ connections: the URI, a connection name the broker's UI shows, and TLS from
//! `amqp.tls` (a CA bundle to trust, a client certificate and key for mutual TLS).

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties, DefaultConnectionBuilder};

use crate::config::{AmqpConfig, AmqpTls};

/// The TLS settings of `tls`, files read now (an unreadable file is an error naming it).
pub fn tls_config(tls: &AmqpTls) -> std::io::Result<OwnedTLSConfig> {
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("reading amqp.tls.{what} {}: {e}", p.display()),
            )
        })
    };
    let cert_chain = match &tls.ca_file {
        Some(p) => Some(String::from_utf8_lossy(&read("ca_file", p)?).into_owned()),
        None => None,
    };
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(c), Some(k)) => Some(OwnedIdentity::PKCS8 {
            pem: read("cert_file", c)?,
            key: read("key_file", k)?,
        }),
        _ => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// Connects to `cfg.uri` as `name` (shown by the broker), with the configured TLS files.
pub async fn connect(cfg: &AmqpConfig, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default()
        .with_connection_name(format!("{name} pid={}", std::process::id()).into());
    DefaultConnectionBuilder::new()?
        .with_uri_str(cfg.uri.clone())
        .with_properties(props)
        .with_tls_config(tls_config(&cfg.tls)?)
        .connect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_are_read_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let cert = dir.path().join("client.pem");
        let key = dir.path().join("client.key");
        std::fs::write(&cert, "cert").unwrap();
        std::fs::write(&key, "key").unwrap();
        let t = tls_config(&AmqpTls {
            ca_file: Some(ca.clone()),
            cert_file: Some(cert),
            key_file: Some(key),
        })
        .unwrap();
        assert!(t.cert_chain.unwrap().contains("BEGIN CERTIFICATE"));
        match t.identity.unwrap() {
            OwnedIdentity::PKCS8 { pem, key } => {
                assert_eq!((pem, key), (b"cert".to_vec(), b"key".to_vec()))
            }
            other => panic!("not the PEM identity: {other:?}"),
        }
        let missing = dir.path().join("nope.pem");
        let e = tls_config(&AmqpTls {
            ca_file: Some(missing.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("amqp.tls.ca_file") && e.to_string().contains("nope.pem"),
            "{e}"
        );
        assert!(tls_config(&AmqpTls::default()).unwrap().identity.is_none());
    }
}
