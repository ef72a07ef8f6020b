//! Blocking client library (std sockets) used by the CLI, the bench tool and tests.
//!
//! API CONTRACT: the public items below are what the CLI, bench and tests program against.
//! Follows NotLeader redirects, retries with backoff within a deadline, and keeps one session id
//! so retried writes stay exactly-once.

use crate::pb::kvpb;
use std::time::Duration;

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
            ClientError::Server(e) => write!(f, "server error {:?}: {}", e.code(), e.message),
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
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(5),
            consistency: kvpb::Consistency::Linearizable,
        }
    }
}

/// A connection to a cluster.
pub struct Client {
    _endpoints: Vec<String>,
}

impl Client {
    /// A client for the given `HOST:PORT` client endpoints (connects lazily).
    pub fn new(endpoints: Vec<String>, opts: ClientOptions) -> Client {
        let _ = opts;
        Client {
            _endpoints: endpoints,
        }
    }
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<kvpb::PutResponse, ClientError> {
        let _ = (key, value);
        todo!()
    }
    pub fn get(&mut self, key: &[u8]) -> Result<kvpb::GetResponse, ClientError> {
        let _ = key;
        todo!()
    }
    pub fn delete(&mut self, key: &[u8]) -> Result<kvpb::DeleteResponse, ClientError> {
        let _ = key;
        todo!()
    }
    pub fn cas(&mut self, cas: kvpb::Cas) -> Result<kvpb::CasResponse, ClientError> {
        let _ = cas;
        todo!()
    }
    pub fn scan(&mut self, scan: kvpb::Scan) -> Result<kvpb::ScanResponse, ClientError> {
        let _ = scan;
        todo!()
    }
    /// Status of one specific endpoint (no redirect).
    pub fn status(&mut self, endpoint: &str) -> Result<kvpb::StatusResponse, ClientError> {
        let _ = endpoint;
        todo!()
    }
}
