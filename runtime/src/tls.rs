//! TLS termination on a listener: rustls's connection state machine (no
//! IO of its own) driven over a monoio TCP stream with owned buffers.
//!
//! The certificate and key are read once at start ([`load`]); each worker
//! builds its own rustls configuration from them, so no connection touches
//! state shared with another core. A [`TlsStream`] is a [`Stream`] like
//! TCP: the session serves HTTP/1.1 on it unchanged, its idle wait counts
//! decrypted bytes already held, and its cancelable read keeps ciphertext
//! that arrived while the read was being cancelled.

use crate::io::{read_more, Peek, Stream};
use crate::timer::Deadline;
use bytes::{Buf, BytesMut};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Split};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::ServerName;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};
use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::sync::Arc;
use weft_core::{Config, ListenerTls};

/// A listener's certificate chain and key, read from their PEM files.
pub struct TlsMaterial {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The CAs of accepted client certificates (mutual TLS).
    client_cas: Option<Vec<CertificateDer<'static>>>,
    /// More chains and keys, chosen by SNI: (the DNS names of the leaf,
    /// chain, key).
    sni: Vec<(Vec<String>, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        TlsMaterial {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
            client_cas: self.client_cas.clone(),
            sni: self
                .sni
                .iter()
                .map(|(names, chain, key)| (names.clone(), chain.clone(), key.clone_key()))
                .collect(),
        }
    }
}

/// Reads the certificate and key of every TLS listener and checks that
/// rustls takes them; per listener, `None` for a plain one. The error
/// names the listener, the file and what is wrong.
pub fn load(config: &Config) -> Result<Vec<Option<TlsMaterial>>, String> {
    config
        .listeners
        .iter()
        .map(|l| {
            let Some(t) = &l.tls else {
                return Ok(None);
            };
            let m = read(t).map_err(|e| format!("listener `{}`: {e}", l.name))?;
            server_config(&m).map_err(|e| format!("listener `{}`: {e}", l.name))?;
            Ok(Some(m))
        })
        .collect()
}

/// A certificate chain and its key from their PEM files; `what`: the
/// field names (`tls`, `tls.sni`) for errors.
fn read_pair(
    cert: &std::path::Path,
    key: &std::path::Path,
    what: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| format!("{what}.cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what}.cert {}: no certificate in the file (expected PEM `BEGIN CERTIFICATE` blocks, leaf first)",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{what}.key {}: {e} (expected a PEM private key)", key.display()))?;
    Ok((certs, key))
}

fn read(t: &ListenerTls) -> Result<TlsMaterial, String> {
    let (certs, key) = read_pair(&t.cert, &t.key, "tls")?;
    let mut sni = Vec::new();
    for (cert, key) in &t.sni {
        let (chain, key) = read_pair(cert, key, "tls.sni")?;
        let leaf = webpki::EndEntityCert::try_from(&chain[0])
            .map_err(|e| format!("tls.sni.cert {}: {e}", cert.display()))?;
        let names: Vec<String> = leaf.valid_dns_names().map(str::to_ascii_lowercase).collect();
        if names.is_empty() {
            return Err(format!(
                "tls.sni.cert {}: the certificate names no DNS name, so no server name can choose it",
                cert.display()
            ));
        }
        sni.push((names, chain, key));
    }
    let client_cas = match &t.client_ca {
        None => None,
        Some(path) => {
            let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect())
                .map_err(|e| format!("tls.client_ca {}: {e}", path.display()))?;
            if cas.is_empty() {
                return Err(format!(
                    "tls.client_ca {}: no certificate in the file (expected the PEM certificates of the client CAs)",
                    path.display()
                ));
            }
            Some(cas)
        }
    };
    Ok(TlsMaterial {
        certs,
        key,
        client_cas,
        sni,
    })
}

/// A cluster's TLS material: the CAs its endpoints chain to, and weft's
/// client certificate when it has one.
pub struct ClientMaterial {
    cas: Vec<CertificateDer<'static>>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// The cluster speaks HTTP/2: ALPN offers `h2` only.
    h2: bool,
}

impl Clone for ClientMaterial {
    fn clone(&self) -> Self {
        ClientMaterial {
            cas: self.cas.clone(),
            client: self.client.as_ref().map(|(c, k)| (c.clone(), k.clone_key())),
            h2: self.h2,
        }
    }
}

/// Reads the CA and client certificate of every cluster with `tls` and
/// checks that rustls takes them and every endpoint has a server name;
/// per cluster, `None` for a plain one.
pub fn load_clusters(config: &Config) -> Result<Vec<Option<ClientMaterial>>, String> {
    config
        .clusters
        .iter()
        .map(|c| {
            let Some(t) = &c.tls else {
                return Ok(None);
            };
            let named = |e: String| format!("cluster `{}`: {e}", c.name);
            let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.ca)
                .and_then(|it| it.collect())
                .map_err(|e| named(format!("tls.ca {}: {e}", t.ca.display())))?;
            if cas.is_empty() {
                return Err(named(format!(
                    "tls.ca {}: no certificate in the file",
                    t.ca.display()
                )));
            }
            let client = match &t.client_cert {
                None => None,
                Some((cert, key)) => Some(read_pair(cert, key, "tls").map_err(named)?),
            };
            let h2 = c.protocol == weft_core::config::Protocol::Http2;
            let m = ClientMaterial { cas, client, h2 };
            client_config(&m).map_err(named)?;
            for authority in &c.authorities {
                server_name(t.sni.as_deref(), authority).map_err(named)?;
            }
            Ok(Some(m))
        })
        .collect()
}

/// The server name weft asks an endpoint for and verifies: `sni`, else
/// the host of its `host:port` as written.
pub(crate) fn server_name(sni: Option<&str>, authority: &str) -> Result<ServerName<'static>, String> {
    let host = sni.unwrap_or_else(|| {
        authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
    });
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("tls: `{host}` is not a server name (a DNS name or an IP address): set tls.sni"))
}

/// A rustls client configuration from `m`: TLS 1.3 and 1.2, ALPN
/// `http/1.1`, the endpoints verified against the cluster's CAs.
pub(crate) fn client_config(m: &ClientMaterial) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in &m.cas {
        roots
            .add(ca.clone())
            .map_err(|e| format!("tls.ca: a certificate rustls cannot use as a CA: {e}"))?;
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots);
    let mut cfg = match &m.client {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                format!("tls.key does not fit tls.cert, or is of a kind rustls does not take: {e}")
            })?,
    };
    cfg.alpn_protocols = if m.h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(cfg))
}

/// A rustls server configuration from `m`: TLS 1.3 and 1.2, ALPN `h2`
/// and `http/1.1`, and client certificates required and verified when `m` has
/// client CAs.
pub(crate) fn server_config(m: &TlsMaterial) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?;
    let builder = match &m.client_cas {
        None => builder.with_no_client_auth(),
        Some(cas) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in cas {
                roots
                    .add(ca.clone())
                    .map_err(|e| format!("tls.client_ca: a certificate rustls cannot use as a CA: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| format!("tls.client_ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let certified = |chain: &[CertificateDer<'static>], key: &PrivateKeyDer<'static>, what: &str| {
        rustls::sign::CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &provider)
            .map(Arc::new)
            .map_err(|e| {
                format!(
                    "{what}: the key does not fit the certificate, or is of a kind rustls does not take: {e}"
                )
            })
    };
    let default = certified(&m.certs, &m.key, "tls")?;
    let named = m
        .sni
        .iter()
        .map(|(names, chain, key)| Ok((names.clone(), certified(chain, key, "tls.sni")?)))
        .collect::<Result<Vec<_>, String>>()?;
    let mut cfg = builder.with_cert_resolver(Arc::new(BySni { default, named }));
    // HTTP/2 first when the client offers both (RFC 9113 §3.2).
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Chooses a certificate by the server name the client asked for (SNI):
/// the first whose DNS names match it (`*.example.com` matches one
/// label), else the default.
#[derive(Debug)]
struct BySni {
    default: Arc<rustls::sign::CertifiedKey>,
    named: Vec<(Vec<String>, Arc<rustls::sign::CertifiedKey>)>,
}

impl rustls::server::ResolvesServerCert for BySni {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let chosen = hello.server_name().and_then(|name| {
            self.named
                .iter()
                .find(|(names, _)| names.iter().any(|n| name_matches(n, name)))
        });
        Some(chosen.map_or(&self.default, |(_, key)| key).clone())
    }
}

/// True when DNS name `pattern` (lower case; maybe `*.suffix`) covers
/// server name `name`.
fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// A ciphertext write in flight (see [`TlsStream::flush_tls`]).
struct Writing<'a> {
    writing: &'a Cell<bool>,
    broken: &'a Cell<bool>,
    done: bool,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.writing.set(false);
        if !self.done {
            self.broken.set(true);
        }
    }
}

/// A TLS connection over TCP: a client's to a listener, or weft's own to
/// an upstream.
pub(crate) struct TlsStream {
    tcp: TcpStream,
    /// rustls's state (boxed: over a kilobyte, and the stream is moved
    /// with every exchange); borrowed only between awaits.
    tls: RefCell<Box<Connection>>,
    /// Ciphertext read from the socket, not yet taken by rustls.
    cipher: BytesMut,
    /// Ciphertext to send (kept to reuse its memory).
    out: Vec<u8>,
    /// A write of ciphertext is in flight (a split stream's read half then
    /// leaves what rustls has to send to the write half).
    writing: Cell<bool>,
    /// The peer closed its side of the TCP connection.
    eof: bool,
    /// A write of ciphertext was cancelled part way: nothing more can be
    /// sent.
    broken: Cell<bool>,
    /// The client's verified identity (mutual TLS).
    identity: Option<std::rc::Rc<str>>,
}

impl TlsStream {
    /// True when the handshake chose HTTP/2 (ALPN `h2`).
    pub(crate) fn is_h2(&self) -> bool {
        self.tls.borrow().alpn_protocol() == Some(b"h2")
    }
}

/// Completes a server handshake on `tcp` (the caller bounds the time).
pub(crate) async fn accept(tcp: TcpStream, cfg: Arc<ServerConfig>) -> io::Result<TlsStream> {
    let conn = ServerConnection::new(cfg).map_err(io::Error::other)?;
    let mut s = handshake(tcp, Connection::Server(conn), "the client").await?;
    s.identity = s
        .tls
        .get_mut()
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(identity_of);
    Ok(s)
}

/// Completes a client handshake with an upstream on `tcp`, verifying that
/// it is `name` (the caller bounds the time).
pub(crate) async fn connect(
    tcp: TcpStream,
    cfg: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<TlsStream> {
    let conn = ClientConnection::new(cfg, name).map_err(io::Error::other)?;
    handshake(tcp, Connection::Client(conn), "the upstream").await
}

/// Drives a handshake to its end; `peer` names the other side in errors.
async fn handshake(tcp: TcpStream, conn: Connection, peer: &str) -> io::Result<TlsStream> {
    let mut s = TlsStream {
        tcp,
        tls: RefCell::new(Box::new(conn)),
        cipher: BytesMut::new(),
        out: Vec::new(),
        writing: Cell::new(false),
        eof: false,
        broken: Cell::new(false),
        identity: None,
    };
    while s.tls.get_mut().is_handshaking() {
        s.flush_tls().await?;
        if !s.tls.get_mut().is_handshaking() {
            break;
        }
        if read_more(&mut s.tcp, &mut s.cipher).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{peer} closed the connection during the handshake"),
            ));
        }
        if let Err(e) = s.feed(false) {
            // Tell the peer why (rustls queued an alert).
            let _ = s.flush_tls().await;
            return Err(e);
        }
    }
    // The last flight (and TLS 1.3 session tickets).
    s.flush_tls().await?;
    Ok(s)
}

/// A verified client certificate's identity: its first URI name (a SPIFFE
/// id, as meshes use), else its first DNS name.
fn identity_of(cert: &CertificateDer<'_>) -> Option<std::rc::Rc<str>> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    let name = cert
        .valid_uri_names()
        .next()
        .or_else(|| cert.valid_dns_names().next())?;
    // It goes into a header: visible ASCII only (a certificate's URI name
    // is only known to be UTF-8).
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some(name.into())
}

impl TlsStream {
    /// Hands the ciphertext read so far to rustls and lets it process it;
    /// `eof`: the peer closed its side.
    fn feed(&mut self, eof: bool) -> io::Result<()> {
        let tls = self.tls.get_mut();
        let mut rd = &self.cipher[..];
        while !rd.is_empty() {
            match tls.read_tls(&mut rd) {
                Ok(0) => break,
                Ok(_) => {}
                // rustls's buffer is full: it takes the rest once its
                // plaintext is read.
                Err(_) => break,
            }
        }
        let used = self.cipher.len() - rd.len();
        self.cipher.advance(used);
        if eof {
            let _ = tls.read_tls(&mut &[][..]);
            self.eof = true;
        }
        tls.process_new_packets()
            .map(|_| ())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Hands rustls ciphertext it could not take before (its buffer was
    /// full); true when it took some.
    fn feed_held(&mut self) -> io::Result<bool> {
        if self.cipher.is_empty() {
            return Ok(false);
        }
        let before = self.cipher.len();
        self.feed(false)?;
        Ok(self.cipher.len() < before)
    }

    /// Decrypted bytes rustls holds: `Some(n)`, `Some(0)` at the end of
    /// the stream, `None` when more ciphertext is needed.
    fn plain_available(&mut self) -> io::Result<Option<usize>> {
        let st = self
            .tls
            .get_mut()
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let strict = matches!(**self.tls.get_mut(), Connection::Client(_));
        Ok(match st.plaintext_bytes_to_read() {
            0 if st.peer_has_closed() => Some(0),
            // Closed without close_notify: an upstream's body that runs
            // until the close could be cut short; a client's request is
            // framed by its own lengths.
            0 if self.eof && strict => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed the TLS connection without close_notify",
                ))
            }
            0 if self.eof => Some(0),
            0 => None,
            n => Some(n),
        })
    }

    /// Decrypted bytes into the `room` bytes at `ptr`: `Some(n)`, `Some(0)`
    /// at the end of the stream, `None` when more ciphertext is needed.
    fn take_plain(&mut self, ptr: *mut u8, room: usize) -> io::Result<Option<usize>> {
        let want = match self.plain_available()? {
            Some(0) => return Ok(Some(0)),
            Some(n) => n.min(room),
            None => return Ok(None),
        };
        // SAFETY: `ptr` points at `room` writable bytes of the caller's
        // owned buffer, alive for this call; the `want` of them used are
        // zeroed before a slice is made, so the slice is initialised.
        let dst = unsafe {
            std::ptr::write_bytes(ptr, 0, want);
            std::slice::from_raw_parts_mut(ptr, want)
        };
        match self.tls.get_mut().reader().read(dst) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(0)),
            Err(e) => Err(e),
        }
    }

    /// True when rustls holds decrypted bytes (or the end of the stream).
    fn has_plain(&self) -> bool {
        match self.tls.try_borrow_mut() {
            Ok(mut tls) => tls
                .process_new_packets()
                .map(|s| s.plaintext_bytes_to_read() > 0 || s.peer_has_closed() || self.eof)
                .unwrap_or(true),
            Err(_) => false,
        }
    }

    /// Sends what rustls has to send.
    async fn flush_tls(&mut self) -> io::Result<()> {
        if self.broken.get() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "a TLS write was cancelled part way: the stream is unusable",
            ));
        }
        if self.writing.get() {
            // The other half's flush is under way: it sends what rustls
            // has queued, this write's records included.
            return Ok(());
        }
        loop {
            let mut out = std::mem::take(&mut self.out);
            out.clear();
            {
                let tls = self.tls.get_mut();
                while tls.wants_write() {
                    tls.write_tls(&mut out)?;
                }
            }
            if out.is_empty() {
                self.out = out;
                return Ok(());
            }
            // Marks a write in flight; dropped before it completed (the
            // future cancelled), it marks the stream broken: part of a
            // record may have gone out.
            let guard = Writing {
                writing: &self.writing,
                broken: &self.broken,
                done: false,
            };
            guard.writing.set(true);
            let (res, out) = self.tcp.write_all(out).await;
            let mut guard = guard;
            guard.done = true;
            drop(guard);
            self.out = out;
            res?;
        }
    }

    /// Reads into the `room` bytes at `ptr`: decrypted bytes held first,
    /// else ciphertext from the socket until a record opens.
    async fn read_into(&mut self, ptr: *mut u8, room: usize) -> io::Result<usize> {
        loop {
            if let Some(n) = self.take_plain(ptr, room)? {
                return Ok(n);
            }
            if self.feed_held()? {
                continue;
            }
            if !self.writing.get() {
                self.flush_tls().await?;
            }
            let n = read_more(&mut self.tcp, &mut self.cipher).await?;
            if let Err(e) = self.feed(n == 0) {
                let _ = self.flush_tls().await;
                return Err(e);
            }
        }
    }
}

impl AsyncReadRent for TlsStream {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let (ptr, room) = (buf.write_ptr(), buf.bytes_total());
        match self.read_into(ptr, room).await {
            Ok(n) => {
                // SAFETY: `read_into` wrote `n` bytes at the buffer's start.
                unsafe { buf.set_init(n) };
                (Ok(n), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // The first iovec with room: a TLS read never fills more than one.
        let (ptr, len) = (buf.write_iovec_ptr(), buf.write_iovec_len());
        // SAFETY: the buffer owns `len` iovecs at `ptr` while we hold it.
        let iovs = unsafe { std::slice::from_raw_parts(ptr, len) };
        let Some(iov) = iovs.iter().find(|v| v.iov_len > 0).copied() else {
            return (Ok(0), buf);
        };
        match self.read_into(iov.iov_base.cast(), iov.iov_len).await {
            Ok(n) => {
                // SAFETY: `n` bytes were written into the iovecs, in order
                // (all in the first with room).
                unsafe { buf.set_init(n) };
                (Ok(n), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }
}

impl AsyncWriteRent for TlsStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the buffer owns `bytes_init` initialised bytes at
        // `read_ptr` while we hold it.
        let src = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let n = match self.tls.get_mut().writer().write(src) {
            Ok(n) => n,
            Err(e) => return (Err(e), buf),
        };
        match self.flush_tls().await {
            Ok(()) => (Ok(n), buf),
            Err(e) => (Err(e), buf),
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the buffer owns its iovecs and the bytes they point at
        // while we hold it.
        let iovs = unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
        let mut n = 0;
        {
            let tls = self.tls.get_mut();
            for v in iovs {
                // SAFETY: as above.
                let src = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
                match tls.writer().write(src) {
                    Ok(k) => {
                        n += k;
                        if k < src.len() {
                            break;
                        }
                    }
                    Err(e) => return (Err(e), buf),
                }
            }
        }
        match self.flush_tls().await {
            Ok(()) => (Ok(n), buf),
            Err(e) => (Err(e), buf),
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.flush_tls().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.tls.get_mut().send_close_notify();
        let _ = self.flush_tls().await;
        self.tcp.shutdown().await
    }
}

// SAFETY: the halves share the TCP stream as monoio's own halves do, and
// rustls's state is only borrowed between awaits; a read half leaves what
// rustls has to send to the write half while a write is in flight.
unsafe impl Split for TlsStream {}

impl crate::io::SendNow for TlsStream {}

impl Stream for TlsStream {
    const GOODBYE: bool = true;

    fn identity(&self) -> Option<std::rc::Rc<str>> {
        self.identity.clone()
    }

    async fn readable(&self, relaxed: bool) -> io::Result<()> {
        if self.has_plain() || !self.cipher.is_empty() {
            return Ok(());
        }
        self.tcp.readable(relaxed).await
    }

    fn shrink(&mut self) {
        if self.cipher.is_empty() {
            self.cipher = BytesMut::new();
        }
        self.out = Vec::new();
    }

    async fn goodbye(&mut self) {
        self.tls.get_mut().send_close_notify();
        let _ = self.flush_tls().await;
    }

    fn peek(&self) -> Peek {
        // Ciphertext rustls could not take yet counts too: a read makes
        // progress on it (and a watch that sees `Nothing` would spin).
        if self.has_plain() || !self.cipher.is_empty() {
            return Peek::Data;
        }
        Stream::peek(&self.tcp)
    }

    async fn read_before(
        &mut self,
        buf: &mut BytesMut,
        until: &mut Deadline<'_>,
    ) -> Option<io::Result<usize>> {
        loop {
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(crate::io::READ_CHUNK);
            }
            let len = buf.len();
            let room = buf.capacity() - len;
            // SAFETY: the spare capacity of `buf` is `room` writable
            // bytes; `take_plain` writes at most that many.
            let ptr = unsafe { buf.as_mut_ptr().add(len) };
            match self.take_plain(ptr, room) {
                Ok(Some(n)) => {
                    // SAFETY: `n` bytes after `len` were written.
                    unsafe { buf.set_len(len + n) };
                    return Some(Ok(n));
                }
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            match self.feed_held() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return Some(Err(e)),
            }
            if !self.writing.get() {
                // Bounded too: a peer that reads nothing must not hold the
                // wait past its deadline.
                let flushed = monoio::select! {
                    r = self.flush_tls() => r,
                    _ = &mut *until => return None,
                };
                if let Err(e) = flushed {
                    return Some(Err(e));
                }
            }
            // A cancelable read of ciphertext: what arrives while it is
            // cancelled stays in `cipher`.
            let n = match self.tcp.read_before(&mut self.cipher, until).await? {
                Ok(n) => n,
                Err(e) => return Some(Err(e)),
            };
            if let Err(e) = self.feed(n == 0) {
                let _ = self.flush_tls().await;
                return Some(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn server_names_match_exactly_or_by_one_wildcard_label() {
        assert!(name_matches("a.test", "A.Test"));
        assert!(name_matches("*.test", "b.test"));
        assert!(!name_matches("*.test", "x.b.test"));
        assert!(!name_matches("*.test", "test"));
        assert!(!name_matches("a.test", "b.test"));
    }
}
