//! TLS termination on real sockets: a rustls client against a weft
//! listener with `tls = { cert, key }`, certificates made at test time.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_tests::*;

/// A CA, and a certificate it signed for `localhost` and 127.0.0.1, written
/// as PEM files into a fresh directory.
struct Certs {
    dir: PathBuf,
    ca: CertificateDer<'static>,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Certs {
    fn new() -> Certs {
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("weft-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("params");
        let leaf_key = rcgen::KeyPair::generate().expect("key");
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).expect("leaf");
        std::fs::write(dir.join("cert.pem"), leaf.pem()).expect("write cert");
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).expect("write key");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca");
        Certs {
            ca: ca.der().clone(),
            ca_cert: ca,
            ca_key,
            dir,
        }
    }

    /// A server certificate this CA signed for `names`, written as
    /// `FILE.pem` and `FILE.key`; returns the listener's `{ cert, key }`.
    fn server_pair(&self, file: &str, names: &[&str]) -> String {
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).expect("cert");
        let (c, k) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        format!("{{ cert = \"{}\", key = \"{}\" }}", c.display(), k.display())
    }

    /// A client certificate this CA signed, with URI name `uri`, and its
    /// key.
    fn signed_client(&self, uri: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.to_string().try_into().expect("uri"))];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("client cert");
        (cert, key)
    }

    /// [`Certs::signed_client`] as DER, for a rustls client.
    fn client_cert(&self, uri: &str) -> (CertificateDer<'static>, rustls::pki_types::PrivateKeyDer<'static>) {
        let (cert, key) = self.signed_client(uri);
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
        (cert.der().clone(), der)
    }

    /// [`Certs::signed_client`] as PEM text, for weft's configuration.
    fn client_pem(&self, uri: &str) -> (String, String) {
        let (cert, key) = self.signed_client(uri);
        (cert.pem(), key.serialize_pem())
    }

    /// A client configuration that trusts this CA and presents a client
    /// certificate with URI name `uri`.
    fn client_with_cert(&self, uri: &str) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca, &[], Some(self.client_cert(uri)))
    }

    /// The listener's `tls = { ... }` line.
    fn listener_tls(&self, extra: &str) -> String {
        format!(
            "tls = {{ cert = \"{}\", key = \"{}\"{extra} }}",
            self.dir.join("cert.pem").display(),
            self.dir.join("key.pem").display()
        )
    }

    /// A client configuration that trusts this CA, offering `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca, alpn, None)
    }
}

/// A client configuration that trusts `ca`, offers `alpn` and presents
/// `identity` (a client certificate and key) when given.
fn client_config(
    ca: &CertificateDer<'static>,
    alpn: &[&[u8]],
    identity: Option<(CertificateDer<'static>, rustls::pki_types::PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut cfg = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(vec![cert], key)
            .expect("client auth"),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Tls {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let conn =
        rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").expect("name")).expect("client");
    rustls::StreamOwned::new(conn, tcp)
}

/// Reads one response with a `content-length` body: (status, head, body).
fn response(s: &mut Tls) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut b = [0u8; 16 * 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut b).expect("read a response");
        assert!(
            n > 0,
            "closed before a response head: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head[9..12].parse().expect("status");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut b).expect("read the body");
        assert!(n > 0, "closed in the body");
        body.extend_from_slice(&b[..n]);
    }
    (status, head, body)
}

fn tls_config(certs: &Certs, up: SocketAddr, extra: &str) -> String {
    simple_config(&[up], &certs.listener_tls(extra), "")
}

/// A mutual-TLS listener whose first route sends the identity
/// `spiffe://mesh/sa/web` to `trusted` and every other request to `other`.
fn identity_routes(certs: &Certs, trusted: &Upstream, other: &Upstream) -> String {
    let tls = certs.listener_tls(&format!(
        ", client_ca = \"{}\"",
        certs.dir.join("ca.pem").display()
    ));
    format!(
        "{}\n[[listener]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\n{tls}\n\n\
         [[route]]\ncluster = \"trusted\"\nmatch = {{ headers = {{ weft-client-identity = \"spiffe://mesh/sa/web\" }} }}\n\n\
         [[route]]\ncluster = \"other\"\n\n\
         [[cluster]]\nname = \"trusted\"\nendpoints = [\"{}\"]\n\n\
         [[cluster]]\nname = \"other\"\nendpoints = [\"{}\"]\n",
        runtime_section(1),
        trusted.addr,
        other.addr
    )
}

/// GETs and a large POST over TLS on one keep-alive connection: ALPN
/// `http/1.1` for a client that offers only it, bodies byte for byte both
/// ways, and the upstream told the client came over https.
fn requests_over_tls_keep_alive_and_carry_large_bodies() {
    let certs = Certs::new();
    let up = Upstream::echo("up");
    let weft = start(&tls_config(&certs, up.addr, ""));
    let addr = weft.addr("in").expect("listener `in`");
    let mut s = connect(addr, certs.client(&[b"http/1.1"]));
    s.write_all(b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send");
    let (status, _, body) = response(&mut s);
    assert_eq!((status, body.as_slice()), (200, &b"hello from up"[..]));
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let head = format!(
        "POST /b HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    s.write_all(head.as_bytes()).expect("send head");
    s.write_all(&big).expect("send body");
    let (status, _, body) = response(&mut s);
    assert_eq!(status, 200);
    assert!(body == big, "the echoed body differs ({} bytes back)", body.len());
    s.write_all(b"GET /c HTTP/1.1\r\nHost: localhost\r\nx-response-bytes: 2000000\r\n\r\n")
        .expect("send");
    let (status, _, body) = response(&mut s);
    assert_eq!((status, body.len()), (200, 2_000_000));
    assert_eq!(up.count(), 3);
    assert!(
        up.request(0).head.contains("x-forwarded-proto: https\r\n"),
        "{}",
        up.request(0).head
    );
    assert_eq!(up.request(1).body, big);
    assert_eq!(weft.failures(), 0);
}

/// Bad TLS input ends that connection only: plain HTTP on the TLS port, a
/// client that never starts its handshake (closed at the handshake
/// timeout), a client that does not trust the certificate. A good client
/// is served meanwhile and after.
fn bad_tls_clients_end_only_their_own_connection() {
    let certs = Certs::new();
    let up = Upstream::echo("up");
    let weft = start(&tls_config(&certs, up.addr, ", handshake_timeout = \"200ms\""));
    let addr = weft.addr("in").expect("listener `in`");
    // Plain HTTP: weft answers with an alert (or nothing) and closes.
    let mut plain = TcpStream::connect(addr).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send");
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(!got.starts_with(b"HTTP/"), "plain HTTP answered on a TLS port");
    // Silent: closed once the handshake timeout passed.
    let mut silent = TcpStream::connect(addr).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let begun = Instant::now();
    let n = silent.read(&mut [0u8; 16]).unwrap_or(0);
    assert_eq!(n, 0, "weft sent something to a client that said nothing");
    assert!(
        begun.elapsed() < Duration::from_secs(5),
        "not closed at the handshake timeout"
    );
    // Distrust: the client refuses weft's certificate.
    let stranger = Certs::new();
    let mut wary = connect(addr, stranger.client(&[]));
    assert!(
        wary.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .and_then(|_| wary.flush())
            .is_err()
            || wary.read(&mut [0u8; 16]).is_err(),
        "a client that does not trust the certificate got through"
    );
    // A good client, after all that.
    let mut s = connect(addr, certs.client(&[]));
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send");
    assert_eq!(response(&mut s).0, 200);
    assert_eq!(up.count(), 1, "only the good client's request went upstream");
    assert_eq!(weft.failures(), 0);
}

/// weft closing a TLS connection says so with close_notify, when it idles
/// out and after a last response: the client sees a clean end of stream,
/// not a truncation.
fn an_idle_tls_connection_is_closed_with_close_notify() {
    let certs = Certs::new();
    let up = Upstream::echo("up");
    let config = simple_config(
        &[up.addr],
        &format!("idle_timeout = \"200ms\"\n{}", certs.listener_tls("")),
        "",
    );
    let weft = start(&config);
    let addr = weft.addr("in").expect("listener `in`");
    let mut s = connect(addr, certs.client(&[]));
    s.write_all(b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send");
    assert_eq!(response(&mut s).0, 200);
    // Idle past the timeout: weft closes, cleanly.
    let n = s
        .read(&mut [0u8; 64])
        .expect("a clean end of stream, not an error");
    assert_eq!(n, 0);
    // A response that ends the connection (the client asked) ends with
    // close_notify too.
    let mut s = connect(addr, certs.client(&[]));
    s.write_all(b"GET /b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("send");
    assert_eq!(response(&mut s).0, 200);
    let n = s
        .read(&mut [0u8; 64])
        .expect("a clean end of stream after the last response");
    assert_eq!(n, 0);
    assert_eq!(weft.failures(), 0);
}

/// Mutual TLS: with `client_ca`, a client without a certificate is
/// refused at the handshake; one with a certificate the CA signed is
/// served, its identity (the URI name) goes upstream in
/// `weft-client-identity` in place of any copy the client sent, and routes
/// can match it (a client's own field of that name never matches).
fn mutual_tls_verifies_clients_and_passes_their_identity_on() {
    let certs = Certs::new();
    let (trusted, other) = (Upstream::echo("trusted"), Upstream::echo("other"));
    let weft = start(&identity_routes(&certs, &trusted, &other));
    let addr = weft.addr("in").expect("listener `in`");
    // The web client: its identity routes it, and goes upstream once.
    let mut s = connect(addr, certs.client_with_cert("spiffe://mesh/sa/web"));
    s.write_all(b"GET /a HTTP/1.1\r\nHost: localhost\r\nweft-client-identity: spiffe://forged\r\n\r\n")
        .expect("send");
    let (status, _, body) = response(&mut s);
    assert_eq!((status, body.as_slice()), (200, &b"hello from trusted"[..]));
    let head = trusted.request(0).head.to_ascii_lowercase();
    assert_eq!(head.matches("weft-client-identity").count(), 1, "{head}");
    assert!(
        head.contains("weft-client-identity: spiffe://mesh/sa/web\r\n"),
        "{head}"
    );
    // Another client claiming the web identity in a header: not matched.
    let mut s = connect(addr, certs.client_with_cert("spiffe://mesh/sa/batch"));
    s.write_all(b"GET /b HTTP/1.1\r\nHost: localhost\r\nweft-client-identity: spiffe://mesh/sa/web\r\n\r\n")
        .expect("send");
    let (status, _, body) = response(&mut s);
    assert_eq!((status, body.as_slice()), (200, &b"hello from other"[..]));
    assert!(
        other
            .request(0)
            .head
            .contains("weft-client-identity: spiffe://mesh/sa/batch\r\n"),
        "{}",
        other.request(0).head
    );
    // No certificate: refused at the handshake, nothing goes upstream.
    let mut anon = connect(addr, certs.client(&[]));
    let refused = anon
        .write_all(b"GET /c HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .and_then(|_| anon.flush())
        .and_then(|_| anon.read(&mut [0u8; 64]));
    assert!(
        !matches!(refused, Ok(n) if n > 0),
        "a client without a certificate was served"
    );
    // A certificate from another CA: refused too.
    let stranger = Certs::new();
    let mut alien = connect(
        addr,
        client_config(&certs.ca, &[], Some(stranger.client_cert("spiffe://mesh/sa/web"))),
    );
    let refused = alien
        .write_all(b"GET /d HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .and_then(|_| alien.flush())
        .and_then(|_| alien.read(&mut [0u8; 64]));
    assert!(
        !matches!(refused, Ok(n) if n > 0),
        "a certificate of another CA was taken"
    );
    assert_eq!((trusted.count(), other.count()), (1, 1));
    assert_eq!(weft.failures(), 0);
}

/// Certificates chosen by SNI: each client that names a server gets the
/// certificate for that name (its verification of the name passes), a
/// wildcard covers one label, and other names get the default.
fn certificates_are_chosen_by_server_name() {
    let certs = Certs::new();
    let up = Upstream::echo("up");
    let a = certs.server_pair("a", &["a.test"]);
    let b = certs.server_pair("b", &["*.b.test"]);
    let weft = start(&tls_config(&certs, up.addr, &format!(", sni = [{a}, {b}]")));
    let addr = weft.addr("in").expect("listener `in`");
    for name in ["a.test", "x.b.test", "localhost"] {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let server = ServerName::try_from(name.to_string()).expect("name");
        let conn = rustls::ClientConnection::new(certs.client(&[]), server).expect("client");
        let mut s = rustls::StreamOwned::new(conn, tcp);
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {name}\r\n\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(response(&mut s).0, 200, "{name}");
    }
    // A name no certificate carries gets the default, which does not
    // carry it either: the client refuses.
    let tcp = TcpStream::connect(addr).expect("connect");
    let conn =
        rustls::ClientConnection::new(certs.client(&[]), ServerName::try_from("c.test").expect("name"))
            .expect("client");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    assert!(s.write_all(b"GET / HTTP/1.1\r\nHost: c.test\r\n\r\n").is_err());
    assert_eq!(up.count(), 3);
}

/// The mesh hop over mutual TLS: an HTTP/1.1 client talks plain to weft A,
/// whose cluster speaks TLS to weft B with a client certificate; B
/// verifies it and passes A's identity to the application, which sees the
/// client's request otherwise unchanged. An A whose CA does not trust B's
/// certificate gets no connection (503 connect-failed), and nothing
/// reaches the application.
fn the_mesh_hop_over_mutual_tls() {
    mesh_hop("http1");
}

/// The mesh hop with HTTP/2 between the sidecars (ALPN `h2`, which A's
/// cluster requires): the application still sees the client's HTTP/1.1
/// request line, and a body both ways.
fn the_mesh_hop_over_mutual_tls_and_http2() {
    mesh_hop("http2");
}

/// client (HTTP/1.1) -> weft A -> mutual TLS, `protocol` -> weft B ->
/// application (HTTP/1.1).
fn mesh_hop(protocol: &str) {
    let certs = Certs::new();
    let app = Upstream::echo("app");
    // B: a TLS listener that requires client certificates of the mesh CA.
    let b_tls = certs.listener_tls(&format!(
        ", client_ca = \"{}\"",
        certs.dir.join("ca.pem").display()
    ));
    let b = start(&simple_config(&[app.addr], &b_tls, ""));
    let b_addr = b.addr("in").expect("listener `in`");
    // A: plain to the client, mutual TLS to B as spiffe://mesh/sa/a.
    let (cert, key) = certs.client_pem("spiffe://mesh/sa/a");
    std::fs::write(certs.dir.join("a.pem"), cert).expect("write");
    std::fs::write(certs.dir.join("a.key"), key).expect("write");
    let a_cluster = format!(
        "protocol = \"{protocol}\"\ntls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}",
        certs.dir.join("ca.pem").display(),
        certs.dir.join("a.pem").display(),
        certs.dir.join("a.key").display()
    );
    let a = start(&simple_config(&[b_addr], "", &a_cluster));
    let a_addr = a.addr("in").expect("listener `in`");
    let mut c = Client::connect(a_addr);
    for i in 0..3 {
        let r = c.get(&format!("/hop/{i}?q=1"), "");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "hello from app"),
            "request {i}"
        );
    }
    let head = app.request(0).head;
    assert!(head.starts_with("GET /hop/0?q=1 HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains("weft-client-identity: spiffe://mesh/sa/a\r\n"),
        "{head}"
    );
    assert!(head.contains("x-forwarded-proto: https\r\n"), "{head}");
    // A body up and back through the hop.
    let big = pattern(200_000, 9);
    c.send(
        format!(
            "POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    );
    c.send(&big);
    let r = c.response(false).expect("a response");
    assert_eq!(r.status, 200);
    assert!(
        r.body == big,
        "the body came back changed ({} bytes)",
        r.body.len()
    );
    assert_eq!(app.request(3).body, big);
    // A that does not trust B's certificate: no connection, no request.
    let stranger = Certs::new();
    let wrong = format!(
        "protocol = \"{protocol}\"\ntls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}",
        stranger.dir.join("ca.pem").display(),
        certs.dir.join("a.pem").display(),
        certs.dir.join("a.key").display()
    );
    let a2 = start(&simple_config(&[b_addr], "", &wrong));
    let r = get(a2.addr("in").expect("listener `in`"), "/nope");
    assert_eq!((r.status, r.header("weft-error")), (503, Some("connect-failed")));
    assert_eq!(app.count(), 4);
    assert_eq!(a.failures() + b.failures(), 0);
}

/// Health checks of a TLS cluster go over TLS, with the cluster's client
/// certificate: a weft B that requires one passes them; an endpoint that
/// does not speak TLS fails them and is taken out, so every request goes
/// to B.
fn health_checks_of_a_tls_cluster_go_over_tls() {
    let certs = Certs::new();
    let app = Upstream::echo("app");
    let b_tls = certs.listener_tls(&format!(
        ", client_ca = \"{}\"",
        certs.dir.join("ca.pem").display()
    ));
    let b = start(&simple_config(&[app.addr], &b_tls, ""));
    let b_addr = b.addr("in").expect("listener `in`");
    // Speaks no TLS: reads whatever comes and answers nothing.
    let plain = Upstream::scripted(|mut s, _, _| {
        let _ = std::io::copy(&mut s, &mut std::io::sink());
    });
    let (cert, key) = certs.client_pem("spiffe://mesh/sa/a");
    std::fs::write(certs.dir.join("a.pem"), cert).expect("write");
    std::fs::write(certs.dir.join("a.key"), key).expect("write");
    let cluster = format!(
        "tls = {{ ca = \"{}\", sni = \"localhost\", cert = \"{}\", key = \"{}\" }}\n\
         health_check = {{ interval = \"50ms\", timeout = \"50ms\" }}\n",
        certs.dir.join("ca.pem").display(),
        certs.dir.join("a.pem").display(),
        certs.dir.join("a.key").display()
    );
    let a = start(&simple_config(&[b_addr, plain.addr], "", &cluster));
    let a_addr = a.addr("in").expect("listener `in`");
    // The plain endpoint fails its first (TLS) probe; B passes its own.
    assert!(
        eventually(Duration::from_secs(5), || app
            .count_where(|r| r.head.starts_with("GET /health "))
            >= 2),
        "B was never probed over TLS"
    );
    for i in 0..20 {
        let r = get(a_addr, "/x");
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "hello from app"),
            "request {i}"
        );
    }
    assert!(plain.accepted() > 0, "the plain endpoint was never probed");
}

/// A request head larger than one TLS record and one read (rustls takes
/// at most one buffer of ciphertext at a time) to an upstream that takes
/// its time while weft watches the client: answered.
fn a_large_head_over_tls_to_a_slow_upstream_is_served() {
    let certs = Certs::new();
    let up = Upstream::echo("up");
    let weft = start(&tls_config(&certs, up.addr, ""));
    let addr = weft.addr("in").expect("listener `in`");
    let mut s = connect(addr, certs.client(&[]));
    let big = "v".repeat(40 * 1024);
    let req = format!("GET /big HTTP/1.1\r\nHost: localhost\r\nx-delay-ms: 150\r\nx-big: {big}\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let (status, _, body) = response(&mut s);
    assert_eq!((status, body.as_slice()), (200, &b"hello from up"[..]));
    assert_eq!(weft.failures(), 0);
}

/// A client certificate whose URI name carries a line break gives no
/// identity: nothing of it reaches the upstream's head.
fn an_identity_with_a_line_break_is_not_passed_on() {
    let certs = Certs::new();
    let up = Upstream::echo("up");
    let tls = certs.listener_tls(&format!(
        ", client_ca = \"{}\"",
        certs.dir.join("ca.pem").display()
    ));
    let weft = start(&simple_config(&[up.addr], &tls, ""));
    let addr = weft.addr("in").expect("listener `in`");
    let mut s = connect(addr, certs.client_with_cert("spiffe://x\r\nx-evil: 1"));
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send");
    assert_eq!(response(&mut s).0, 200);
    let head = up.request(0).head.to_ascii_lowercase();
    assert!(
        !head.contains("x-evil") && !head.contains("weft-client-identity"),
        "{head}"
    );
}

/// A certificate file that is not one, a key file that is missing, or a
/// key that does not fit the certificate stops the start with a message
/// naming the listener and the file.
#[test]
fn bad_certificate_files_are_refused_at_start() {
    let certs = Certs::new();
    let up = dead_addr();
    std::fs::write(certs.dir.join("junk.pem"), "not a certificate\n").expect("write");
    let config = simple_config(
        &[up],
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            certs.dir.join("junk.pem").display(),
            certs.dir.join("key.pem").display()
        ),
        "",
    );
    let parsed = weft::load::parse(&config).expect("the file itself is valid");
    let e = weft::Server::start(parsed).err().expect("refused").to_string();
    assert!(
        e.contains("listener `in`") && e.contains("junk.pem") && e.contains("no certificate"),
        "{e}"
    );
    let config = simple_config(
        &[up],
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            certs.dir.join("cert.pem").display(),
            certs.dir.join("missing.pem").display()
        ),
        "",
    );
    let e = weft::Server::start(weft::load::parse(&config).expect("valid"))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("listener `in`") && e.contains("tls.key") && e.contains("missing.pem"),
        "{e}"
    );
    // Another certificate's key.
    let other = Certs::new();
    let config = simple_config(
        &[up],
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            certs.dir.join("cert.pem").display(),
            other.dir.join("key.pem").display()
        ),
        "",
    );
    let e = weft::Server::start(weft::load::parse(&config).expect("valid"))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("does not fit"), "{e}");
}

/// A client offering `h2` gets HTTP/2 (ALPN), and with a client
/// certificate its identity routes its streams and goes upstream once,
/// a forged copy dropped.
fn http2_by_alpn_with_a_client_identity() {
    let certs = Certs::new();
    let (trusted, other) = (Upstream::echo("trusted"), Upstream::echo("other"));
    let weft = start(&identity_routes(&certs, &trusted, &other));
    let addr = weft.addr("in").expect("listener `in`");
    let cfg = (*certs.client_with_cert("spiffe://mesh/sa/web")).clone();
    let mut c = weft_tests::h2c::H2::connect_tls(addr, cfg, "localhost");
    let req = weft_tests::h2c::H2::head(addr, "GET", "/a", &[("weft-client-identity", "spiffe://forged")]);
    let r = c.request(req, b"").expect("a response");
    assert_eq!((r.status, r.text().as_str()), (200, "hello from trusted"));
    let head = trusted.request(0).head.to_ascii_lowercase();
    assert!(head.starts_with("get /a http/1.1\r\n"), "{head}");
    assert_eq!(head.matches("weft-client-identity").count(), 1, "{head}");
    assert!(
        head.contains("weft-client-identity: spiffe://mesh/sa/web\r\n"),
        "{head}"
    );
    assert!(head.contains("x-forwarded-proto: https\r\n"), "{head}");
    // Another identity, claiming the web one in a field: routed elsewhere.
    let cfg = (*certs.client_with_cert("spiffe://mesh/sa/batch")).clone();
    let mut c = weft_tests::h2c::H2::connect_tls(addr, cfg, "localhost");
    let req = weft_tests::h2c::H2::head(
        addr,
        "GET",
        "/b",
        &[("weft-client-identity", "spiffe://mesh/sa/web")],
    );
    let r = c.request(req, b"").expect("a response");
    assert_eq!((r.status, r.text().as_str()), (200, "hello from other"));
    assert_eq!(weft.failures(), 0);
}

/// A reload reads the listener's certificate again (rotated in place):
/// new connections get the new one; a connection made before keeps going.
fn a_reload_reads_the_certificate_again() {
    let certs = Certs::new();
    let up = Upstream::echo("up");
    let path = certs.dir.join("weft.toml");
    std::fs::write(&path, tls_config(&certs, up.addr, "")).expect("file written");
    let server =
        weft::Server::start(weft::load::from_file(&path).expect("a valid file")).expect("weft starts");
    server.reload_handle().set_source(path.clone());
    let addr = server.addr("in").expect("listener `in`");
    let get = |s: &mut Tls| {
        s.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .expect("request written");
        let (status, _, _) = response(s);
        let peer = s.conn.peer_certificates().expect("the server's certificate")[0].clone();
        (status, peer)
    };
    let mut kept = connect(addr, certs.client(&[b"http/1.1"]));
    let (status, first) = get(&mut kept);
    assert_eq!(status, 200);
    // A new certificate and key in the same files.
    certs.server_pair("rotated", &["localhost", "127.0.0.1"]);
    for (from, to) in [("rotated.pem", "cert.pem"), ("rotated.key", "key.pem")] {
        std::fs::copy(certs.dir.join(from), certs.dir.join(to)).expect("rotated in place");
    }
    assert_eq!(server.reload_handle().from_source(), Ok(2));
    let (status, second) = get(&mut connect(addr, certs.client(&[b"http/1.1"])));
    assert_eq!(status, 200);
    assert_ne!(first, second, "a new connection got the old certificate");
    let rotated =
        CertificateDer::from_pem_file(certs.dir.join("rotated.pem")).expect("the rotated certificate");
    assert_eq!(second, rotated, "the new connection got the rotated certificate");
    let (status, still) = get(&mut kept);
    assert_eq!(
        (status, still),
        (200, first),
        "the connection made before goes on"
    );
    server.shutdown();
}

on_both_drivers!(
    a_reload_reads_the_certificate_again,
    requests_over_tls_keep_alive_and_carry_large_bodies,
    http2_by_alpn_with_a_client_identity,
    bad_tls_clients_end_only_their_own_connection,
    an_idle_tls_connection_is_closed_with_close_notify,
    mutual_tls_verifies_clients_and_passes_their_identity_on,
    certificates_are_chosen_by_server_name,
    the_mesh_hop_over_mutual_tls,
    the_mesh_hop_over_mutual_tls_and_http2,
    a_large_head_over_tls_to_a_slow_upstream_is_served,
    an_identity_with_a_line_break_is_not_passed_on,
    health_checks_of_a_tls_cluster_go_over_tls
);
