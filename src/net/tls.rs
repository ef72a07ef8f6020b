//! TLS for the mio connections ([`crate::net::conn::Conn`]) with rustls, sans-I/O.
//!
//! rustls never touches a socket itself: [`TlsSession::read_some`] reads ciphertext from the
//! socket once (one `read` into a per-thread scratch buffer), feeds it to rustls and moves the
//! plaintext it yields into the connection's ordinary read buffer, so framing, RESP and HTTP
//! parsing see the same bytes as on a plain socket. Writing: the connection's queue of
//! plaintext `Bytes` is encrypted in batches of at most [`TLS_BUFFER_LIMIT`] and only once
//! rustls' own outgoing buffer has been written out, so a slow reader backs up in the
//! connection's queue (which the owners already bound and count), not inside rustls.
//!
//! Nothing here blocks: handshakes advance by one read or one write at a time as readiness
//! events come. Memory per connection: the rustls session (a few KiB), its deframer buffer
//! (at most one TLS record, or 64 KiB for a handshake message: rustls' own cap) and at most
//! [`TLS_BUFFER_LIMIT`] of encrypted output. A TLS error (bad record, alert, certificate
//! refused) is an `InvalidData` I/O error naming the cause; the owner closes the connection.
//!
//! Also here: loading PEM certificates and keys ([`load_certs`], [`load_key`]) with errors that
//! name the file, and building the rustls configurations for each role
//! ([`server_config`], [`client_config`]).

use super::conn::ReadStatus;
use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::cell::RefCell;
use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Ciphertext read from the socket per [`TlsSession::read_some`] call (the same 64 KiB a
/// plain connection reads per call).
const READ_CHUNK: usize = 64 * 1024;
/// rustls' limit on unsent TLS records and on plaintext written before the handshake ends;
/// also the most plaintext encrypted per batch.
pub const TLS_BUFFER_LIMIT: usize = 64 * 1024;

thread_local! {
    /// One scratch buffer per thread (a node is one thread), not one per connection: the
    /// ciphertext of one read lives here only until rustls has taken it.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0u8; READ_CHUNK]);
}

/// One TLS session on one connection.
pub struct TlsSession {
    conn: rustls::Connection,
    /// Plaintext bytes encrypted into rustls' outgoing buffer and not known to be written
    /// (counted in the owner's `pending_out`); zero once that buffer is empty.
    encrypted_unsent: usize,
    /// The other side sent close_notify: it sends nothing more.
    closed: bool,
}

impl fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.conn.is_handshaking())
            .field("encrypted_unsent", &self.encrypted_unsent)
            .finish()
    }
}

/// A TLS protocol error as an I/O error (the connection is closed for it).
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

impl TlsSession {
    /// The server side of an accepted connection.
    pub fn server(cfg: &Arc<rustls::ServerConfig>) -> io::Result<TlsSession> {
        let conn = rustls::ServerConnection::new(cfg.clone()).map_err(tls_error)?;
        Ok(TlsSession::wrap(conn.into()))
    }

    /// The client side of a connection to `name` (checked against the server's certificate).
    pub fn client(
        cfg: &Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<TlsSession> {
        let conn = rustls::ClientConnection::new(cfg.clone(), name).map_err(tls_error)?;
        Ok(TlsSession::wrap(conn.into()))
    }

    /// Takes over a client connection whose handshake was completed elsewhere (a blocking
    /// connect, as the bench's load generator does before going non-blocking).
    pub fn from_client(conn: rustls::ClientConnection) -> TlsSession {
        TlsSession::wrap(conn.into())
    }

    fn wrap(mut conn: rustls::Connection) -> TlsSession {
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        TlsSession {
            conn,
            encrypted_unsent: 0,
            closed: false,
        }
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Plaintext accepted but not yet written as TLS records.
    pub fn unsent(&self) -> usize {
        self.encrypted_unsent
    }

    /// One `read` of ciphertext from `sock`; its plaintext is appended to `rbuf`, and any
    /// handshake reply rustls has to send is written (as far as the socket takes it; the rest
    /// goes out on the next flush). The status counts ciphertext bytes, so `Drained` keeps its
    /// meaning for edge-triggered readers. After the other side's close_notify: `Eof`.
    pub fn read_some<S: Read + Write>(
        &mut self,
        sock: &mut S,
        rbuf: &mut BytesMut,
    ) -> io::Result<ReadStatus> {
        if self.closed {
            return Ok(ReadStatus::Eof);
        }
        let status = SCRATCH.with(|scratch| -> io::Result<ReadStatus> {
            let mut scratch = scratch.borrow_mut();
            let asked = scratch.len();
            let n = loop {
                match sock.read(&mut scratch[..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(ReadStatus::WouldBlock)
                    }
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                return Ok(ReadStatus::Eof);
            }
            if let Err(e) = self.absorb(&scratch[..n], rbuf) {
                // Best effort: the alert rustls queued for this error tells the other side why.
                let _ = self.conn.write_tls(sock);
                return Err(e);
            }
            Ok(if n < asked {
                ReadStatus::Drained(n)
            } else {
                ReadStatus::Data(n)
            })
        })?;
        if self.conn.wants_write() {
            self.write_out(sock)?;
        }
        if self.closed && status != ReadStatus::WouldBlock {
            return Ok(ReadStatus::Eof);
        }
        Ok(status)
    }

    /// Hands `data` (ciphertext) to rustls record by record, moving plaintext into `rbuf`.
    fn absorb(&mut self, mut data: &[u8], rbuf: &mut BytesMut) -> io::Result<()> {
        while !data.is_empty() && !self.closed {
            // `&[u8]` is a `Read` that advances itself; rustls takes at most 4 KiB per call.
            let took = self.conn.read_tls(&mut data)?;
            let state = self.conn.process_new_packets().map_err(tls_error)?;
            self.drain_plaintext(rbuf)?;
            if state.peer_has_closed() {
                self.closed = true;
            }
            if took == 0 {
                break;
            }
        }
        Ok(())
    }

    fn drain_plaintext(&mut self, rbuf: &mut BytesMut) -> io::Result<()> {
        let mut reader = self.conn.reader();
        loop {
            let n = match reader.fill_buf() {
                Ok([]) => return Ok(()),
                Ok(b) => {
                    rbuf.extend_from_slice(b);
                    b.len()
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // UnexpectedEof (TCP closed without close_notify) is seen as Eof by the read.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            };
            reader.consume(n);
        }
    }

    /// Writes rustls' pending TLS records. `Ok(true)` once all are out, `Ok(false)` if the
    /// socket would block.
    pub fn write_out<S: Write>(&mut self, sock: &mut S) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.encrypted_unsent = 0;
        Ok(true)
    }

    /// Encrypts a prefix of `data` into rustls' outgoing buffer; returns how much it took
    /// (0 once the buffer limit is reached). Only after the handshake: before it, the owner
    /// keeps plaintext in its own queue.
    pub fn encrypt(&mut self, data: &[u8]) -> io::Result<usize> {
        debug_assert!(!self.conn.is_handshaking());
        let n = self.conn.writer().write(data)?;
        self.encrypted_unsent += n;
        Ok(n)
    }

    /// Queues a close_notify and writes what the socket takes (a connection being closed).
    pub fn close_notify<S: Write>(&mut self, sock: &mut S) {
        self.conn.send_close_notify();
        let _ = self.write_out(sock);
    }
}

// -------------------------------------------------------------------------------------------
// Certificates, keys and configurations
// -------------------------------------------------------------------------------------------

/// Why TLS material could not be loaded or used; names the file.
#[derive(Debug)]
pub enum TlsError {
    /// The file could not be read or is not PEM.
    Read { path: PathBuf, err: String },
    /// The file holds no certificate.
    NoCert(PathBuf),
    /// rustls refused the material (a key not matching the certificate, an unusable CA).
    Invalid { what: String, err: String },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, err } => write!(f, "cannot read {}: {err}", path.display()),
            TlsError::NoCert(path) => {
                write!(f, "{} holds no PEM certificate", path.display())
            }
            TlsError::Invalid { what, err } => write!(f, "{what}: {err}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Every certificate in a PEM file (a chain, or a bundle of CAs), in file order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |e: rustls::pki_types::pem::Error| TlsError::Read {
        path: path.to_path_buf(),
        err: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(path.to_path_buf()));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1); refused if every user may read
/// it (`entropy::read_key_file`).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let read_err = |err| TlsError::Read {
        path: path.to_path_buf(),
        err,
    };
    let pem = crate::entropy::read_key_file(path).map_err(read_err)?;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        read_err(match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PEM private key in it".into(),
            e => e.to_string(),
        })
    })
}

/// The CA certificates in `path` as a root store.
fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            what: format!("CA certificate in {}", path.display()),
            err: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and key pair, by file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The server side: presents `identity`; with `client_ca`, demands a client certificate
/// issued by one of the CAs in that file (mutual TLS, for the peer port).
pub fn server_config(
    identity: &CertFiles,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = load_certs(&identity.cert)?;
    let key = load_key(&identity.key)?;
    let invalid = |what: String| {
        move |e: rustls::Error| TlsError::Invalid {
            what,
            err: e.to_string(),
        }
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid("TLS protocol versions".into()))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(load_roots(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Invalid {
                what: format!("client CA {}", ca.display()),
                err: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(invalid(format!(
            "certificate {} with key {}",
            identity.cert.display(),
            identity.key.display()
        )))?;
    // Connections are long-lived and few: no resumption tickets to issue, store or rotate.
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// The client side: trusts the CAs in `ca`; with `identity`, presents that certificate when
/// the server asks for one (mutual TLS, for peer links).
pub fn client_config(
    ca: &Path,
    identity: Option<&CertFiles>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = load_roots(ca)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            what: "TLS protocol versions".into(),
            err: e.to_string(),
        })?
        .with_root_certificates(roots);
    let cfg = match identity {
        Some(id) => builder
            .with_client_auth_cert(load_certs(&id.cert)?, load_key(&id.key)?)
            .map_err(|e| TlsError::Invalid {
                what: format!(
                    "client certificate {} with key {}",
                    id.cert.display(),
                    id.key.display()
                ),
                err: e.to_string(),
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// A node's TLS settings; all `None` is plain TCP on every port.
#[derive(Debug, Clone, Default)]
pub struct NodeTls {
    /// The client port and the RESP port (`--client-tls-cert/--client-tls-key`).
    pub client: Option<Arc<rustls::ServerConfig>>,
    /// A follower's link to the leader's client port (`--forward`), and `--join`'s requests:
    /// on whenever the client port is TLS (the cluster's nodes share that setting).
    pub forward: Option<Arc<rustls::ClientConfig>>,
    /// Mutual TLS on peer links (`--peer-tls-*`).
    pub peer: Option<PeerTls>,
}

/// Both ends of mutual TLS between peers: the listener demands a certificate from the CA,
/// the dialler presents its own and checks the listener's.
#[derive(Debug, Clone)]
pub struct PeerTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

/// The name a client checks the server's certificate against, from a `HOST:PORT` address:
/// an IP address (certificates from `raftkv tls init` carry 127.0.0.1 and ::1) or a DNS name.
pub fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a host name or IP address for TLS: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One direction of an in-memory byte pipe, with an optional cap on what a write takes (a
    /// full socket buffer).
    #[derive(Default)]
    struct Pipe {
        inbox: Vec<u8>,
        outbox: Vec<u8>,
        write_cap: Option<usize>,
    }

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.inbox.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.inbox.len());
            buf[..n].copy_from_slice(&self.inbox[..n]);
            self.inbox.drain(..n);
            Ok(n)
        }
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let room = self
                .write_cap
                .map_or(usize::MAX, |c| c - self.outbox.len().min(c));
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(room);
            self.outbox.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Moves each side's written bytes to the other side's inbox.
    fn carry(a: &mut Pipe, b: &mut Pipe) {
        let ab = std::mem::take(&mut a.outbox);
        b.inbox.extend_from_slice(&ab);
        let ba = std::mem::take(&mut b.outbox);
        a.inbox.extend_from_slice(&ba);
    }

    struct Material {
        _dir: tempfile::TempDir,
        ca: PathBuf,
        node: CertFiles,
        other_ca: PathBuf,
    }

    fn material() -> Material {
        let dir = tempfile::tempdir().unwrap();
        let m = crate::net::certgen::init(dir.path(), 1, &[]).unwrap();
        let other = dir.path().join("other");
        let o = crate::net::certgen::init(&other, 1, &[]).unwrap();
        Material {
            ca: m.ca,
            node: m.nodes[0].clone(),
            other_ca: o.ca,
            _dir: dir,
        }
    }

    /// Runs reads on both sides until neither makes progress; returns each side's plaintext.
    fn pump(
        c: &mut TlsSession,
        cp: &mut Pipe,
        s: &mut TlsSession,
        sp: &mut Pipe,
    ) -> io::Result<(BytesMut, BytesMut)> {
        let (mut cbuf, mut sbuf) = (BytesMut::new(), BytesMut::new());
        for _ in 0..50 {
            c.write_out(cp)?;
            s.write_out(sp)?;
            carry(cp, sp);
            let a = s.read_some(sp, &mut sbuf)?;
            let b = c.read_some(cp, &mut cbuf)?;
            if a == ReadStatus::WouldBlock
                && b == ReadStatus::WouldBlock
                && cp.outbox.is_empty()
                && sp.outbox.is_empty()
            {
                break;
            }
        }
        Ok((cbuf, sbuf))
    }

    fn sessions(m: &Material, client_ca: &Path, mutual: bool) -> (TlsSession, TlsSession) {
        let scfg = server_config(&m.node, mutual.then_some(m.ca.as_path())).unwrap();
        let ccfg = client_config(client_ca, mutual.then_some(&m.node)).unwrap();
        let s = TlsSession::server(&scfg).unwrap();
        let c = TlsSession::client(&ccfg, server_name("127.0.0.1:7000").unwrap()).unwrap();
        (c, s)
    }

    #[test]
    fn handshake_then_data_both_ways() {
        let m = material();
        for mutual in [false, true] {
            let (mut c, mut s) = sessions(&m, &m.ca, mutual);
            let (mut cp, mut sp) = (Pipe::default(), Pipe::default());
            pump(&mut c, &mut cp, &mut s, &mut sp).unwrap();
            assert!(
                !c.is_handshaking() && !s.is_handshaking(),
                "mutual={mutual}"
            );
            // 200 KiB one way (several batches, several records), a little the other.
            let big: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
            let mut sent = 0;
            let mut got = BytesMut::new();
            while got.len() < big.len() {
                if sent < big.len() && c.unsent() == 0 {
                    sent += c.encrypt(&big[sent..]).unwrap();
                }
                let (cb, sb) = pump(&mut c, &mut cp, &mut s, &mut sp).unwrap();
                assert!(cb.is_empty());
                got.extend_from_slice(&sb);
            }
            assert_eq!(&got[..], &big[..]);
            s.encrypt(b"pong").unwrap();
            let (cb, _) = pump(&mut c, &mut cp, &mut s, &mut sp).unwrap();
            assert_eq!(&cb[..], b"pong");
            // close_notify: the reader sees Eof, not an error.
            c.close_notify(&mut cp);
            carry(&mut cp, &mut sp);
            let mut buf = BytesMut::new();
            assert_eq!(s.read_some(&mut sp, &mut buf).unwrap(), ReadStatus::Eof);
        }
    }

    #[test]
    fn encrypted_output_is_bounded_while_the_socket_is_full() {
        let m = material();
        let (mut c, mut s) = sessions(&m, &m.ca, false);
        let (mut cp, mut sp) = (Pipe::default(), Pipe::default());
        pump(&mut c, &mut cp, &mut s, &mut sp).unwrap();
        cp.write_cap = Some(1000);
        let big = vec![1u8; 1 << 20];
        let took = c.encrypt(&big).unwrap();
        assert!(took <= TLS_BUFFER_LIMIT, "took {took}");
        assert!(
            !c.write_out(&mut cp).unwrap(),
            "1000-byte socket cannot take it"
        );
        // rustls' limit counts the records still waiting: only what the socket took is free.
        let more = c.encrypt(&big).unwrap();
        assert!(more <= 1000, "took {more} more with {took} waiting");
    }

    #[test]
    fn wrong_ca_fails_the_handshake_with_a_clear_error() {
        let m = material();
        let (mut c, mut s) = sessions(&m, &m.other_ca, false);
        let (mut cp, mut sp) = (Pipe::default(), Pipe::default());
        let err = pump(&mut c, &mut cp, &mut s, &mut sp).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    #[test]
    fn client_without_certificate_is_refused_by_mutual_tls() {
        let m = material();
        let scfg = server_config(&m.node, Some(&m.ca)).unwrap();
        let ccfg = client_config(&m.ca, None).unwrap();
        let mut s = TlsSession::server(&scfg).unwrap();
        let mut c = TlsSession::client(&ccfg, server_name("localhost:1").unwrap()).unwrap();
        let (mut cp, mut sp) = (Pipe::default(), Pipe::default());
        let err = pump(&mut c, &mut cp, &mut s, &mut sp).unwrap_err();
        assert!(err.to_string().contains("TLS"), "{err}");
    }

    #[test]
    fn garbage_and_plaintext_are_errors_not_panics() {
        let m = material();
        let scfg = server_config(&m.node, None).unwrap();
        let mut rng = crate::rng::Rng::new(0x7157);
        let inputs: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            vec![0, 0, 0, 5, 1, 2, 3, 4, 5],
            // A handshake record header announcing an oversized record.
            vec![22, 3, 1, 0xff, 0xff, 1, 2, 3],
            (0..5000).map(|_| rng.next_u64() as u8).collect(),
        ];
        for input in inputs {
            let mut s = TlsSession::server(&scfg).unwrap();
            let mut sp = Pipe {
                inbox: input.clone(),
                ..Default::default()
            };
            let mut buf = BytesMut::new();
            let r = s.read_some(&mut sp, &mut buf);
            assert!(
                r.as_ref()
                    .is_err_and(|e| e.kind() == io::ErrorKind::InvalidData),
                "input {:?}: {r:?}",
                &input[..input.len().min(16)]
            );
            assert!(buf.is_empty());
            // The alert rustls queued went out.
            assert_eq!(sp.outbox.first(), Some(&21), "an alert record");
        }
    }

    #[test]
    fn pem_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = load_certs(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let e = load_certs(&empty).unwrap_err().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_key(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.pem") && e.contains("private key"), "{e}");
    }

    #[test]
    fn a_private_key_every_user_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let m = material();
        assert!(load_key(&m.node.key).is_ok(), "certgen's 0600 key");
        std::fs::set_permissions(&m.node.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_key(&m.node.key).unwrap_err().to_string();
        assert!(e.contains("every user") && e.contains("644"), "{e}");
        assert!(
            server_config(&m.node, None).is_err(),
            "a server on the refused key"
        );
    }

    #[test]
    fn server_names_from_addresses() {
        assert!(matches!(
            server_name("127.0.0.1:7000").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:7000").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("localhost:7000").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("bad name:1").is_err());
    }
}
