//! Blocking client library (std sockets) used by the CLI, the bench tool and tests.
//!
//! API CONTRACT: the public items below are what the CLI, bench and tests program against.
//! Follows NotLeader redirects, retries with backoff within a deadline, and keeps one session id
//! so retried writes stay exactly-once.
//!
//! Protocol use (see docs/kv.md): one connection at a time, one request in flight. Every write
//! gets the next `seq` of this client's session; every retry of that write (after an I/O error,
//! a redirect, or a retryable error code) resends the same `seq`, so the cluster applies it at
//! most once. Once a write's outcome is final for the client (success, a non-retryable error, or
//! giving up at the deadline) it never resends that seq and acknowledges it (`acked_seq`), so the
//! server may forget the saved result — and a stale copy still in flight is then rejected rather
//! than applied late.
//!
//! Authentication (`ClientOptions::token`): every new connection, reconnects included, first
//! sends `Auth` with the token and is used only once that succeeded. A node that refuses the
//! token (UNAUTHENTICATED) fails the operation at once: another node would refuse it too.

mod conn;
mod members;

use crate::net::client_auth::ClientToken;
use crate::pb::kvpb;
use crate::rng::Rng;
use conn::{response_too_large, Backoff, Conn, Limits};
use kvpb::request::Op;
use kvpb::response::Result as R;
use prost::Message;
use std::time::{Duration, Instant};

/// Client errors.
#[derive(Debug)]
pub enum ClientError {
    /// No endpoint answered within the deadline.
    Timeout(String),
    /// The server rejected the request (bad request, too large, ...).
    Server(kvpb::Error),
    /// Transport failure on every endpoint.
    Io(std::io::Error),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Timeout(s) => write!(f, "timed out: {s}"),
            ClientError::Server(e) => {
                write!(f, "server error {}: {}", e.code().as_str_name(), e.message)
            }
            ClientError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Client options.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Overall deadline per operation, retries included.
    pub timeout: Duration,
    /// Consistency for reads.
    pub consistency: kvpb::Consistency,
    /// How long one attempt waits for its answer to start (and longest silence while a large
    /// request or answer moves) before it is abandoned and retried on the next endpoint. Each
    /// attempt that runs out doubles the next one's, up to what is left of `timeout`. See
    /// [`DEFAULT_ATTEMPT_TIMEOUT`].
    pub attempt_timeout: Duration,
    /// How long one connect may take. See [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// Largest frame payload sent or read. A request over it is refused locally with
    /// `TOO_LARGE`, never sent; a response over it fails the operation with `TOO_LARGE`.
    /// Keep it equal to the servers' `--max-frame` (both default to
    /// [`DEFAULT_MAX_FRAME`](crate::net::framing::DEFAULT_MAX_FRAME)).
    pub max_frame: usize,
    /// The client token to present on every connection (`raftkv --token-file`); none = do
    /// not authenticate (nodes without `--client-token-file`).
    pub token: Option<ClientToken>,
}

/// Default [`ClientOptions::attempt_timeout`]: 1 s, a fifth of the default 5 s deadline.
///
/// Why this value: a healthy cluster answers a write after one commit round (a few ms here;
/// the slowest passes measured, a snapshot fork or a slow fsync on a loaded disk, take under
/// 100 ms), so 1 s is ten times the worst normal answer, and a hung or blackholed first
/// endpoint costs 1 s instead of the whole deadline, leaving four fifths of it for the others.
/// A leader that is slow but live (a multi-second fsync) is not abandoned for good: each
/// attempt that runs out doubles the next one's (1 s, 2 s, 4 s, ... capped by the deadline),
/// so with the default deadline its last attempt still gets about 2 s of the remaining time.
///
/// Why abandoning is safe: a read has no effect, and a write is retried with the same session
/// `seq` (module doc), so a retry that races the abandoned copy — both may commit — is applied
/// once: the later copy finds the saved result in the session table and returns it (see
/// `kv::session`). The server's own request timeout (5 s, `--request-timeout-ms`) is longer on
/// purpose: the server only answers TIMEOUT when it gives up itself.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// Default [`ClientOptions::connect_timeout`]: 500 ms. A TCP handshake takes one round trip
/// (well under a millisecond on a LAN, a few hundred ms across continents); a handshake not done
/// in 500 ms has lost its SYN (the kernel's first retransmission comes only after 1 s) or meets a
/// host that is down or blackholed, and the next endpoint is the faster way on.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Default [`ClientOptions::timeout`]: 5 s, long enough to ride out a leader election (about
/// 1 s with the server defaults) and a few retries, short enough for an interactive command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: DEFAULT_TIMEOUT,
            consistency: kvpb::Consistency::Linearizable,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_frame: crate::net::framing::DEFAULT_MAX_FRAME,
            token: None,
        }
    }
}

/// Consecutive redirects followed without a pause (more means the hints go in circles, e.g.
/// during an election; then we back off between them).
const MAX_FREE_REDIRECTS: u32 = 3;

/// A connection to a cluster.
pub struct Client {
    endpoints: Vec<String>,
    opts: ClientOptions,
    /// The open connection, if any (to the last node that answered).
    conn: Option<Conn>,
    /// Endpoint to try next when there is no connection and no leader hint.
    next_endpoint: usize,
    /// Where the last NOT_LEADER said the leader is.
    leader_hint: Option<String>,
    /// Session id: random, nonzero, fixed for the client's life.
    client_id: u64,
    /// Last seq handed out to a write.
    seq: u64,
    /// Every seq <= acked_seq is finished for this client.
    acked_seq: u64,
    /// Last request id used.
    request_id: u64,
    rng: Rng,
    /// TLS to every endpoint (trusting this configuration's CAs), or plain TCP.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// A seed that differs between clients: clock, process id and a per-process counter.
fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos
        ^ ((std::process::id() as u64) << 32)
        ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(48)
}

impl Client {
    /// A client for the given `HOST:PORT` client endpoints (connects lazily).
    pub fn new(endpoints: Vec<String>, opts: ClientOptions) -> Client {
        let mut rng = Rng::new(fresh_seed());
        let mut client_id = 0;
        while client_id == 0 {
            client_id = rng.next_u64();
        }
        Client {
            endpoints,
            opts,
            conn: None,
            next_endpoint: 0,
            leader_hint: None,
            client_id,
            seq: 0,
            acked_seq: 0,
            request_id: 0,
            rng,
            tls: None,
        }
    }

    /// Speaks TLS to every endpoint, trusting the CAs in `cfg` (from
    /// [`crate::net::tls::client_config`], e.g. with the cluster's `ca.pem`).
    pub fn with_tls(mut self, cfg: std::sync::Arc<rustls::ClientConfig>) -> Client {
        self.tls = Some(cfg);
        self
    }

    /// This client's session id (nonzero).
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<kvpb::PutResponse, ClientError> {
        let op = Op::Put(kvpb::Put {
            key: key.to_vec().into(),
            value: value.to_vec().into(),
            ..Default::default()
        });
        match self.write(op)? {
            R::Put(r) => Ok(r),
            other => Err(unexpected("put", other)),
        }
    }

    pub fn get(&mut self, key: &[u8]) -> Result<kvpb::GetResponse, ClientError> {
        let op = Op::Get(kvpb::Get {
            key: key.to_vec().into(),
        });
        match self.call(op, 0)? {
            R::Get(r) => Ok(r),
            other => Err(unexpected("get", other)),
        }
    }

    pub fn delete(&mut self, key: &[u8]) -> Result<kvpb::DeleteResponse, ClientError> {
        let op = Op::Delete(kvpb::Delete {
            key: key.to_vec().into(),
        });
        match self.write(op)? {
            R::Delete(r) => Ok(r),
            other => Err(unexpected("delete", other)),
        }
    }

    pub fn cas(&mut self, cas: kvpb::Cas) -> Result<kvpb::CasResponse, ClientError> {
        match self.write(Op::Cas(cas))? {
            R::Cas(r) => Ok(r),
            other => Err(unexpected("cas", other)),
        }
    }

    pub fn scan(&mut self, scan: kvpb::Scan) -> Result<kvpb::ScanResponse, ClientError> {
        match self.call(Op::Scan(scan), 0)? {
            R::Scan(r) => Ok(r),
            other => Err(unexpected("scan", other)),
        }
    }

    /// Changes the membership (sent to the leader, retried like a read while the cluster has
    /// no leader or another change is in flight). Answered once the configuration entry is
    /// applied. A retry after an uncertain outcome may find the change made already and be
    /// refused as such (BAD_REQUEST "already a ...", "was removed already");
    /// [`Client::member_change_once`] counts that as done if the change is in force. With
    /// `expected_conf_index` such a retry is refused with CONFLICT instead.
    pub fn member_change(
        &mut self,
        change: kvpb::MemberChange,
    ) -> Result<kvpb::MemberChangeResponse, ClientError> {
        match self.call(Op::MemberChange(change), 0)? {
            R::MemberChange(r) => Ok(r),
            other => Err(unexpected("member change", other)),
        }
    }

    /// The configuration as the leader sees it (with each member's progress).
    pub fn member_list(&mut self) -> Result<kvpb::MemberListResponse, ClientError> {
        match self.call(Op::MemberList(kvpb::MemberListRequest {}), 0)? {
            R::MemberList(r) => Ok(r),
            other => Err(unexpected("member list", other)),
        }
    }

    /// Asks the leader to hand leadership to `to` (0 = the most up-to-date other voter).
    /// Returns the target; the transfer completes within an election timeout or is dropped.
    pub fn leader_transfer(&mut self, to: u64) -> Result<u64, ClientError> {
        match self.call(Op::LeaderTransfer(kvpb::LeaderTransfer { to }), 0)? {
            R::LeaderTransfer(r) => Ok(r.to),
            other => Err(unexpected("leader transfer", other)),
        }
    }

    /// Status of one specific endpoint (no redirect, no retry; own short-lived connection): one
    /// attempt, bounded by the connect and attempt timeouts and the deadline.
    pub fn status(&mut self, endpoint: &str) -> Result<kvpb::StatusResponse, ClientError> {
        let deadline = Instant::now() + self.opts.timeout;
        let req = self.request(Op::Status(kvpb::StatusRequest {}), 0);
        let lim = self.limits(self.opts.attempt_timeout, deadline);
        let resp = self
            .open(endpoint, deadline)
            .and_then(|mut c| c.call(&req, &lim))
            .map_err(|e| io_error(endpoint, e))?;
        match resp.result {
            Some(R::Status(s)) => Ok(s),
            Some(R::Error(e)) => Err(ClientError::Server(e)),
            other => Err(unexpected_opt("status", other)),
        }
    }

    /// Asks the leader to clear the NO_SPACE alarm (`raftkv alarm disarm`); answered once the
    /// clear applied, with the alarm's state then. A node still over its quota or out of disk
    /// makes the leader raise it again.
    pub fn disarm_alarm(&mut self) -> Result<kvpb::StatusResponse, ClientError> {
        match self.write(Op::Alarm(kvpb::AlarmRequest { disarm: true }))? {
            R::Status(s) => Ok(s),
            other => Err(unexpected("alarm disarm", other)),
        }
    }

    /// Status of the leader: asks the cluster (with the usual retries), then follows the
    /// answering node's `leader_addr` once if that node is not the leader.
    pub fn leader_status(&mut self) -> Result<kvpb::StatusResponse, ClientError> {
        let s = match self.call(Op::Status(kvpb::StatusRequest {}), 0)? {
            R::Status(s) => s,
            other => return Err(unexpected("status", other)),
        };
        if s.role == "leader" || s.leader_addr.is_empty() {
            return Ok(s);
        }
        let addr = s.leader_addr.clone();
        self.status(&addr)
    }

    /// Backup step 1 or 2 (proto/kv.proto, `SnapshotBegin`): asks for a snapshot covering
    /// `min_index` (0: the leader takes a linearizable point first). Follows the leader like a
    /// read. Returns the answer and the endpoint that gave it (fetch the chunks from there).
    pub fn snapshot_begin(
        &mut self,
        min_index: u64,
    ) -> Result<(kvpb::SnapshotBeginResponse, String), ClientError> {
        let op = Op::SnapshotBegin(kvpb::SnapshotBegin { min_index });
        match self.call(op, 0)? {
            R::SnapshotBegin(r) => {
                let addr = self
                    .conn
                    .as_ref()
                    .map(|c| c.addr.clone())
                    .unwrap_or_default();
                Ok((r, addr))
            }
            other => Err(unexpected("snapshot begin", other)),
        }
    }

    /// Backup step 3: one chunk of a snapshot file from `endpoint` (that node only: the file is
    /// its own). Reuses the open connection to it; a transport failure reconnects to the same
    /// endpoint until the deadline. Asks for at most what fits this client's frame limit.
    pub fn snapshot_chunk(
        &mut self,
        endpoint: &str,
        index: u64,
        term: u64,
        offset: u64,
    ) -> Result<kvpb::SnapshotChunkResponse, ClientError> {
        let room = self
            .opts
            .max_frame
            .saturating_sub(crate::limits::RESPONSE_ROOM);
        let max_bytes = room.clamp(1, crate::limits::SNAPSHOT_CHUNK) as u32;
        let op = Op::SnapshotChunk(kvpb::SnapshotChunk {
            index,
            term,
            offset,
            max_bytes,
        });
        let deadline = Instant::now() + self.opts.timeout;
        let mut backoff = Backoff::new();
        loop {
            let conn = match self.conn.take().filter(|c| c.addr == endpoint) {
                Some(c) => Ok(c),
                None => self.open(endpoint, deadline),
            };
            let req = self.request(op.clone(), 0);
            let lim = self.limits(self.opts.attempt_timeout, deadline);
            let res = conn.and_then(|mut c| c.call(&req, &lim).map(|r| (c, r)));
            match res {
                Ok((c, resp)) => {
                    self.conn = Some(c);
                    return match resp.result {
                        Some(R::SnapshotChunk(r)) => Ok(r),
                        Some(R::Error(e)) => Err(ClientError::Server(e)),
                        other => Err(unexpected_opt("snapshot chunk", other)),
                    };
                }
                Err(e)
                    if Instant::now() >= deadline
                        || response_too_large(&e).is_some()
                        || conn::is_tls_mismatch(&e)
                        || auth_refused(&e).is_some() =>
                {
                    return Err(io_error(endpoint, e));
                }
                Err(e) => {
                    log::debug!("client: snapshot chunk from {endpoint}: {e}");
                    backoff.sleep(&mut self.rng, deadline);
                }
            }
        }
    }

    /// Connects to `addr` and, with a token, authenticates the new connection. A refused
    /// token is a `PermissionDenied` error carrying the node's answer ([`auth_refused`]).
    fn open(&mut self, addr: &str, deadline: Instant) -> std::io::Result<Conn> {
        let mut conn =
            Conn::connect_tls(addr, self.opts.connect_timeout, deadline, self.tls.as_ref())?;
        let Some(token) = self.opts.token.as_ref().map(ClientToken::secret) else {
            return Ok(conn);
        };
        let req = self.request(Op::Auth(kvpb::Auth { token }), 0);
        let lim = self.limits(self.opts.attempt_timeout, deadline);
        match conn.call(&req, &lim)?.result {
            Some(R::Auth(_)) => Ok(conn),
            Some(R::Error(e)) if e.code() == kvpb::ErrorCode::Unauthenticated => Err(
                std::io::Error::new(std::io::ErrorKind::PermissionDenied, AuthRefused(e)),
            ),
            // Anything else (a node shutting down, an old node that does not know Auth): this
            // node cannot be used; the next one may.
            other => Err(std::io::Error::other(format!(
                "authenticating to {addr}: unexpected answer {other:?}"
            ))),
        }
    }

    /// A write: takes the next seq, runs it to a final outcome, then acknowledges it.
    fn write(&mut self, op: Op) -> Result<R, ClientError> {
        self.seq += 1;
        let seq = self.seq;
        let out = self.call(op, seq);
        // Whatever happened, this seq is never sent again.
        self.acked_seq = seq;
        out
    }

    fn request(&mut self, op: Op, seq: u64) -> kvpb::Request {
        self.request_id += 1;
        kvpb::Request {
            id: self.request_id,
            client_id: self.client_id,
            seq,
            acked_seq: self.acked_seq,
            consistency: self.opts.consistency as i32,
            op: Some(op),
        }
    }

    fn limits(&self, attempt: Duration, deadline: Instant) -> Limits {
        Limits {
            deadline,
            attempt,
            max_frame: self.opts.max_frame,
        }
    }

    /// Sends `op` (with write seq `seq`, 0 for reads) until it gets a final answer or the
    /// deadline passes.
    ///
    /// Each attempt is bounded by the attempt timeout (see [`DEFAULT_ATTEMPT_TIMEOUT`]); the
    /// error at the deadline names the last real problem (a redirect to a named leader is
    /// routing, not a problem, so it never hides the timeout or refusal that came before it).
    fn call(&mut self, op: Op, seq: u64) -> Result<R, ClientError> {
        if self.endpoints.is_empty() {
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "client has no endpoints",
            )));
        }
        // Refused here, before any connect: the server would only refuse it after reading it.
        let size = self.request(op.clone(), seq).encoded_len();
        if size > self.opts.max_frame {
            return Err(ClientError::Server(kvpb::Error {
                code: kvpb::ErrorCode::TooLarge as i32,
                message: format!(
                    "request of {size} bytes exceeds the maximum frame of {} bytes \
                     (not sent; the limit is the client's max_frame / --max-frame)",
                    self.opts.max_frame
                ),
                ..Default::default()
            }));
        }
        let deadline = Instant::now() + self.opts.timeout;
        let mut backoff = Backoff::new();
        let mut attempt = self.opts.attempt_timeout.max(Duration::from_millis(1));
        let mut redirects = 0u32;
        let mut last_problem = String::from("no attempt made");
        // A write that reached a server may have been applied, whatever came back after.
        let mut sent_write = false;
        loop {
            if Instant::now() >= deadline {
                let outcome = if sent_write {
                    "; the write may or may not have been applied"
                } else {
                    ""
                };
                return Err(ClientError::Timeout(format!(
                    "no answer within {:?}; last problem: {last_problem}{outcome}",
                    self.opts.timeout
                )));
            }
            let mut conn = match self.conn.take() {
                Some(c) => c,
                None => {
                    let addr = self.pick_endpoint();
                    match self.open(&addr, deadline) {
                        Ok(c) => c,
                        Err(e) if conn::is_tls_mismatch(&e) || auth_refused(&e).is_some() => {
                            return Err(io_error(&addr, e))
                        }
                        Err(e) => {
                            last_problem = format!("connect to {addr}: {e}");
                            log::debug!("client: {last_problem}");
                            backoff.sleep(&mut self.rng, deadline);
                            continue;
                        }
                    }
                }
            };
            let req = self.request(op.clone(), seq);
            sent_write |= seq != 0;
            let lim = self.limits(attempt, deadline);
            let resp = match conn.call(&req, &lim) {
                Ok(r) => r,
                Err(e) if conn::is_tls_mismatch(&e) => return Err(io_error(&conn.addr, e)),
                Err(e) => {
                    if let Some(fe) = response_too_large(&e) {
                        // The same request would get the same answer elsewhere.
                        return Err(ClientError::Server(kvpb::Error {
                            code: kvpb::ErrorCode::TooLarge as i32,
                            message: format!(
                                "response from {}: {fe} (the client's max_frame / --max-frame)",
                                conn.addr
                            ),
                            ..Default::default()
                        }));
                    }
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        // This node may be hung, or just slow: the next attempt waits longer.
                        attempt = attempt.saturating_mul(2);
                    }
                    // The connection is in an unknown state: drop it, try the next endpoint.
                    last_problem = format!("request to {}: {e}", conn.addr);
                    log::debug!("client: {last_problem}");
                    backoff.sleep(&mut self.rng, deadline);
                    continue;
                }
            };
            let err = match resp.result {
                Some(R::Error(e)) => e,
                Some(r) => {
                    self.conn = Some(conn);
                    return Ok(r);
                }
                None => {
                    last_problem = format!("empty response from {}", conn.addr);
                    backoff.sleep(&mut self.rng, deadline);
                    continue;
                }
            };
            let problem = format!(
                "{} from {}: {}",
                err.code().as_str_name(),
                conn.addr,
                err.message
            );
            log::debug!("client: {problem}");
            use kvpb::ErrorCode as C;
            let redirect = err.code() == C::NotLeader && !err.leader_addr.is_empty();
            if !redirect || last_problem == "no attempt made" {
                last_problem = problem;
            }
            match err.code() {
                C::NotLeader => {
                    // Drop the connection; go to the named leader, else the next endpoint.
                    if !err.leader_addr.is_empty() && err.leader_addr != conn.addr {
                        self.leader_hint = Some(err.leader_addr);
                    }
                    redirects += 1;
                    if redirects > MAX_FREE_REDIRECTS || self.leader_hint.is_none() {
                        backoff.sleep(&mut self.rng, deadline);
                    }
                }
                C::Unavailable | C::Timeout | C::Uncertain => {
                    // Same node, same seq, after a pause.
                    self.conn = Some(conn);
                    backoff.sleep(&mut self.rng, deadline);
                }
                // The node is stopping (its listener is closed): a write it answered so may
                // still commit (it was in the log) or not. Retry on the next endpoint with the
                // same seq: the session applies it once, and a copy that did commit answers
                // with its saved result. Drop any hint: it may name this node.
                C::ShuttingDown => {
                    self.leader_hint = None;
                    backoff.sleep(&mut self.rng, deadline);
                }
                // A frame error closes the connection on the server side: drop it here too.
                C::TooLarge => return Err(ClientError::Server(err)),
                // Refused and not applied: a retry would be refused too until space is freed.
                C::NoSpace => {
                    self.conn = Some(conn);
                    return Err(ClientError::Server(err));
                }
                // Without (or with a wrong) token every node refuses alike: final.
                C::BadRequest
                | C::Conflict
                | C::Internal
                | C::ErrorUnknown
                | C::Unauthenticated => {
                    self.conn = Some(conn);
                    return Err(ClientError::Server(err));
                }
            }
        }
    }

    /// The leader hint if there is one, else the next endpoint in round-robin order.
    fn pick_endpoint(&mut self) -> String {
        if let Some(h) = self.leader_hint.take() {
            return h;
        }
        let addr = self.endpoints[self.next_endpoint % self.endpoints.len()].clone();
        self.next_endpoint = (self.next_endpoint + 1) % self.endpoints.len();
        addr
    }
}

/// A node's refusal of this client's token, inside the `io::Error` of a connect.
#[derive(Debug)]
struct AuthRefused(kvpb::Error);

impl std::fmt::Display for AuthRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client token refused: {}", self.0.message)
    }
}

impl std::error::Error for AuthRefused {}

/// The refusal inside an error from [`Client::open`], if that is what it is.
fn auth_refused(e: &std::io::Error) -> Option<&kvpb::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<AuthRefused>())
        .map(|r| &r.0)
}

fn io_error(endpoint: &str, e: std::io::Error) -> ClientError {
    use std::io::ErrorKind as K;
    if let Some(refused) = auth_refused(&e) {
        let mut err = refused.clone();
        err.message = format!("{endpoint}: {} (check --token-file)", err.message);
        return ClientError::Server(err);
    }
    match e.kind() {
        K::TimedOut | K::WouldBlock => ClientError::Timeout(format!("{endpoint}: {e}")),
        _ => ClientError::Io(std::io::Error::new(e.kind(), format!("{endpoint}: {e}"))),
    }
}

fn unexpected(what: &str, r: R) -> ClientError {
    unexpected_opt(what, Some(r))
}

fn unexpected_opt(what: &str, r: Option<R>) -> ClientError {
    ClientError::Server(kvpb::Error {
        code: kvpb::ErrorCode::ErrorUnknown as i32,
        message: format!("unexpected answer to {what}: {r:?}"),
        ..Default::default()
    })
}
