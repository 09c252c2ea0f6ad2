//! A TCP proxy in front of the RabbitMQ server for network-fault tests: optional TLS termination
//! that demands a client certificate (mutual TLS), a reading of the AMQP frames the client sends
//! (connection names, channel closes), and a switch that stalls what the broker sends back on the
//! worker's publishing connection (so publisher confirms stop arriving).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openssl::ssl::{Ssl, SslAcceptor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_openssl::SslStream;

/// The broker the proxy forwards to.
const UPSTREAM: &str = "127.0.0.1:5672";

/// What the proxy saw of one client connection.
#[derive(Clone, Debug, Default)]
pub struct Conn {
    /// The client's `Connection.StartOk` properties, as lossy text (holds the connection name).
    pub start_ok: String,
    /// The reply text of every `Channel.Close` the client sent.
    pub channel_closes: Vec<String>,
    /// The verified client certificate's subject common name (TLS only).
    pub client_cn: Option<String>,
    /// Why the TLS handshake failed, when it did.
    pub tls_error: Option<String>,
}

impl Conn {
    /// The worker's publishing connection (named "labelmill publisher pid=...").
    pub fn is_publisher(&self) -> bool {
        self.start_ok.contains("labelmill publisher")
    }
}

#[derive(Default)]
struct State {
    stall_publisher: AtomicBool,
    conns: Mutex<Vec<Conn>>,
}

/// A running proxy on 127.0.0.1:`port`.
pub struct Proxy {
    /// The port it listens on.
    pub port: u16,
    state: Arc<State>,
}

impl Proxy {
    /// Listens on a free port; with `tls`, every connection must complete that TLS handshake.
    pub async fn start(tls: Option<SslAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let st = state.clone();
        let tls = tls.map(Arc::new);
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let i = {
                    let mut conns = st.conns.lock().unwrap();
                    conns.push(Conn::default());
                    conns.len() - 1
                };
                tokio::spawn(handle(st.clone(), i, sock, tls.clone()));
            }
        });
        Self { port, state }
    }

    /// Holds (`true`) or releases what the broker sends to the publishing connection.
    pub fn stall_publisher(&self, on: bool) {
        self.state.stall_publisher.store(on, Ordering::SeqCst);
    }

    /// Every connection so far, in the order they came.
    pub fn connections(&self) -> Vec<Conn> {
        self.state.conns.lock().unwrap().clone()
    }
}

async fn handle(st: Arc<State>, i: usize, sock: TcpStream, tls: Option<Arc<SslAcceptor>>) {
    let Some(acceptor) = tls else {
        return forward(st, i, sock).await;
    };
    let mut stream = SslStream::new(Ssl::new(acceptor.context()).unwrap(), sock).unwrap();
    if let Err(e) = Pin::new(&mut stream).accept().await {
        st.conns.lock().unwrap()[i].tls_error = Some(e.to_string());
        return;
    }
    let cn = stream.ssl().peer_certificate().and_then(|c| {
        let name = c.subject_name();
        let entry = name.entries_by_nid(openssl::nid::Nid::COMMONNAME).next()?;
        entry.data().to_string().ok()
    });
    st.conns.lock().unwrap()[i].client_cn = cn;
    forward(st, i, stream).await
}

/// Copies both ways until either side closes, reading the client's frames on the way.
async fn forward<S: AsyncRead + AsyncWrite + Send + 'static>(st: Arc<State>, i: usize, client: S) {
    let Ok(up) = TcpStream::connect(UPSTREAM).await else {
        return;
    };
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = up.into_split();
    let st2 = st.clone();
    let to_broker = async move {
        let mut frames = Frames::default();
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(n @ 1..) = cr.read(&mut buf).await {
            frames.feed(&buf[..n], &st, i);
            if uw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let to_client = async move {
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(n @ 1..) = ur.read(&mut buf).await {
            while st2.stall_publisher.load(Ordering::SeqCst)
                && st2.conns.lock().unwrap()[i].is_publisher()
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = to_broker => {}
        _ = to_client => {}
    }
}

/// AMQP 0-9-1 frames from the client: after the 8-byte protocol header, frames of
/// type (1), channel (2), size (4, big-endian), payload, 0xCE.
#[derive(Default)]
struct Frames {
    buf: Vec<u8>,
    header_seen: bool,
}

impl Frames {
    fn feed(&mut self, bytes: &[u8], st: &State, i: usize) {
        self.buf.extend_from_slice(bytes);
        if !self.header_seen {
            if self.buf.len() < 8 {
                return;
            }
            self.buf.drain(..8);
            self.header_seen = true;
        }
        while self.buf.len() >= 7 {
            let size = u32::from_be_bytes(self.buf[3..7].try_into().unwrap()) as usize;
            if self.buf.len() < 7 + size + 1 {
                return;
            }
            let frame: Vec<u8> = self.buf.drain(..7 + size + 1).collect();
            if frame[0] == 1 && size >= 4 {
                method(&frame[7..7 + size], st, i);
            }
        }
    }
}

/// Records the methods the tests look for: Connection.StartOk (10, 11), Channel.Close (20, 40).
fn method(payload: &[u8], st: &State, i: usize) {
    let class = u16::from_be_bytes([payload[0], payload[1]]);
    let id = u16::from_be_bytes([payload[2], payload[3]]);
    let mut conns = st.conns.lock().unwrap();
    match (class, id) {
        (10, 11) => conns[i].start_ok = String::from_utf8_lossy(&payload[4..]).into_owned(),
        (20, 40) if payload.len() >= 7 => {
            // reply-code (2), reply-text (short string: 1 length byte, then the text).
            let len = payload[6] as usize;
            let text = payload.get(7..7 + len).unwrap_or_default();
            conns[i]
                .channel_closes
                .push(String::from_utf8_lossy(text).into_owned());
        }
        _ => {}
    }
}

/// Test certificates: a CA, a server certificate for `localhost` / 127.0.0.1 and a client
/// certificate, all signed by the CA, written as PEM files into `dir`.
pub struct Pki {
    /// The CA certificate (for the worker's `ca_file`).
    pub ca: std::path::PathBuf,
    /// The client certificate and its PKCS#8 key (for `cert_file`, `key_file`).
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
    /// An acceptor with the server certificate that requires a client certificate from the CA.
    pub acceptor: SslAcceptor,
}

impl Pki {
    /// Generates the CA and both certificates.
    pub fn new(dir: &std::path::Path) -> Self {
        use openssl::ssl::{SslMethod, SslVerifyMode};
        let (ca, ca_key) = cert("labelmill-test-ca", None, true);
        let (server, server_key) = cert("localhost", Some((&ca, &ca_key)), false);
        let (client, client_key) = cert("labelmill-test-client", Some((&ca, &ca_key)), false);
        let write = |name: &str, bytes: Vec<u8>| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let ca_path = write("ca.pem", ca.to_pem().unwrap());
        let client_cert = write("client.pem", client.to_pem().unwrap());
        let client_key = write("client.key", client_key.private_key_to_pem_pkcs8().unwrap());
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        b.set_certificate(&server).unwrap();
        b.set_private_key(&server_key).unwrap();
        b.add_client_ca(&ca).unwrap();
        b.cert_store_mut().add_cert(ca).unwrap();
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        Self {
            ca: ca_path,
            client_cert,
            client_key,
            acceptor: b.build(),
        }
    }
}

type Key = openssl::pkey::PKey<openssl::pkey::Private>;

/// A certificate for `cn`, self-signed when `issuer` is `None`.
fn cert(
    cn: &str,
    issuer: Option<(&openssl::x509::X509, &Key)>,
    ca: bool,
) -> (openssl::x509::X509, Key) {
    use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
    use openssl::x509::{X509Builder, X509NameBuilder};
    let key = Key::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let serial = openssl::bn::BigNum::from_u32(rand_serial()).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map_or(&name, |(c, _)| c.subject_name()))
        .unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    if ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
    } else {
        let san = SubjectAlternativeName::new()
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&b.x509v3_context(issuer.map(|(c, _)| c.as_ref()), None))
            .unwrap();
        b.append_extension(san).unwrap();
    }
    let signer = issuer.map_or(&key, |(_, k)| k);
    b.sign(signer, openssl::hash::MessageDigest::sha256())
        .unwrap();
    (b.build(), key)
}

fn rand_serial() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    t.subsec_nanos() ^ (t.as_secs() as u32) | 1
}
