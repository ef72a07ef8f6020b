//! The client commands — put, get, del, cas, scan, status — one function each (membership
//! commands: `members`): send the
//! request through `raftkv::client::Client` (which follows the leader and retries until
//! --timeout-ms), hand the result to `output`, return the exit code.

use crate::args::{AlarmAction, ClientArgs, Cmd, InputArgs};
use crate::escape;
use crate::output::{self, fail, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE};
use raftkv::client::{Client, ClientError, ClientOptions};
use raftkv::pb::kvpb;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

/// Runs a client command (not `serve` or `cluster`) and returns its exit code.
pub fn run(cmd: Cmd) -> u8 {
    let cmd = match cmd {
        Cmd::Member(m) => return crate::members::member(m),
        Cmd::Leader(l) => return crate::members::leader(l),
        Cmd::Serve(_) | Cmd::Cluster(_) | Cmd::Tls(_) => unreachable!("handled in main"),
        cmd => cmd,
    };
    let (c, consistency) = match &cmd {
        Cmd::Put { c, .. }
        | Cmd::Del { c, .. }
        | Cmd::Cas { c, .. }
        | Cmd::Status { c }
        | Cmd::Alarm { c, .. } => (c, kvpb::Consistency::Linearizable),
        Cmd::Get { c, consistency, .. } | Cmd::Scan { c, consistency, .. } => {
            (c, (*consistency).into())
        }
        Cmd::Serve(_)
        | Cmd::Cluster(_)
        | Cmd::Snapshot(_)
        | Cmd::Member(_)
        | Cmd::Leader(_)
        | Cmd::Tls(_)
        | Cmd::NewPeerSecret { .. }
        | Cmd::NewClientToken { .. } => {
            unreachable!("handled above")
        }
    };
    let json = c.json;
    let (mut client, endpoints) = match connect(c, consistency) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let client = &mut client;
    let max_frame = c.max_frame;
    match cmd {
        Cmd::Put {
            key, value, input, ..
        } => {
            let (key, value) = match (input.decode(&key), read_value(value, input, max_frame)) {
                (Ok(k), Ok(v)) => (k, v),
                (Err(e), _) | (_, Err(e)) => return e.report(json),
            };
            report(client.put(&key, &value), json, output::put)
        }
        Cmd::Get {
            key, out, input, ..
        } => match input.decode(&key) {
            Ok(key) => report(client.get(&key), json, |r, json| {
                output::get(&key, r, json, out.as_deref())
            }),
            Err(e) => e.report(json),
        },
        Cmd::Del { key, input, .. } => match input.decode(&key) {
            Ok(key) => report(client.delete(&key), json, |r, json| {
                output::del(&key, r, json)
            }),
            Err(e) => e.report(json),
        },
        Cmd::Cas {
            key,
            value,
            expect_version,
            delete,
            input,
            ..
        } => {
            if delete == value.is_some() {
                eprintln!("raftkv cas: give either VALUE or --delete");
                return EXIT_USAGE;
            }
            let value = match value {
                Some(v) => read_value(Some(v), input, max_frame),
                None => Ok(Vec::new()),
            };
            let (key, value) = match (input.decode(&key), value) {
                (Ok(k), Ok(v)) => (k, v),
                (Err(e), _) | (_, Err(e)) => return e.report(json),
            };
            let req = kvpb::Cas {
                key: key.into(),
                expected_version: expect_version,
                value: value.into(),
                delete,
            };
            report(client.cas(req), json, output::cas)
        }
        Cmd::Scan {
            prefix,
            start,
            end,
            limit,
            keys_only,
            all,
            input,
            ..
        } => {
            let decoded = (|| -> Result<_, InputError> {
                Ok((
                    input.decode(&start)?,
                    input.decode(&end)?,
                    input.decode(&prefix)?,
                ))
            })();
            let (start, end, prefix) = match decoded {
                Ok(x) => x,
                Err(e) => return e.report(json),
            };
            let req = kvpb::Scan {
                start: start.into(),
                end: end.into(),
                prefix: prefix.into(),
                limit,
                keys_only,
            };
            scan(client, req, all, json)
        }
        Cmd::Status { .. } => status(client, &endpoints, json),
        Cmd::Alarm { action, .. } => {
            let r = match action {
                AlarmAction::List => client.leader_status(),
                AlarmAction::Disarm => client.disarm_alarm(),
            };
            report(r, json, output::alarm)
        }
        Cmd::Serve(_)
        | Cmd::Cluster(_)
        | Cmd::Snapshot(_)
        | Cmd::Member(_)
        | Cmd::Leader(_)
        | Cmd::Tls(_)
        | Cmd::NewPeerSecret { .. }
        | Cmd::NewClientToken { .. } => {
            unreachable!("handled above")
        }
    }
}

/// A key or value that could not be read: a usage error (exit 2), or standard input over the
/// frame limit (TOO_LARGE, exit 4, as the server would answer).
enum InputError {
    Usage(String),
    TooLarge(String),
}

impl InputError {
    fn report(self, json: bool) -> u8 {
        match self {
            InputError::Usage(m) => {
                eprintln!("raftkv: {m}");
                EXIT_USAGE
            }
            InputError::TooLarge(m) => fail(
                ClientError::Server(kvpb::Error {
                    code: kvpb::ErrorCode::TooLarge as i32,
                    message: m,
                    ..Default::default()
                }),
                json,
            ),
        }
    }
}

impl InputArgs {
    /// The bytes a command-line KEY/VALUE/--prefix/... stands for: as given (any bytes, not
    /// only UTF-8), or decoded from hex / the escape syntax.
    fn decode(&self, arg: &OsStr) -> Result<Vec<u8>, InputError> {
        let raw = arg.as_bytes();
        let r = if self.hex {
            escape::unhex(raw)
        } else if self.escaped {
            escape::unescape(raw)
        } else {
            Ok(raw.to_vec())
        };
        r.map_err(|e| {
            let how = if self.hex { "--hex" } else { "--escaped" };
            InputError::Usage(format!(
                "{how} argument {:?}: {e}",
                String::from_utf8_lossy(raw)
            ))
        })
    }
}

/// A put/cas VALUE: from the command line, or (omitted or `-`) standard input read raw, at most
/// `max_frame` bytes (a longer value could never fit in a request frame).
fn read_value(
    value: Option<OsString>,
    input: InputArgs,
    max_frame: usize,
) -> Result<Vec<u8>, InputError> {
    match value {
        Some(v) if v != "-" => input.decode(&v),
        _ => {
            let mut buf = Vec::new();
            let limit = max_frame as u64 + 1;
            std::io::stdin()
                .lock()
                .take(limit)
                .read_to_end(&mut buf)
                .map_err(|e| {
                    InputError::Usage(format!("reading the value from standard input: {e}"))
                })?;
            if buf.len() as u64 == limit {
                return Err(InputError::TooLarge(format!(
                    "the value on standard input is over {max_frame} bytes, the maximum frame \
                     (not sent; raise --max-frame here and on the servers for larger values)"
                )));
            }
            Ok(buf)
        }
    }
}

/// A client for --endpoints (connecting lazily) and the endpoints; exit 2 if there are none.
pub fn connect(
    c: &ClientArgs,
    consistency: kvpb::Consistency,
) -> Result<(Client, Vec<String>), u8> {
    let endpoints: Vec<String> = c
        .endpoints
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if endpoints.is_empty() {
        eprintln!("raftkv: --endpoints is empty");
        return Err(EXIT_USAGE);
    }
    let token = match &c.token_file {
        Some(f) => match raftkv::net::client_auth::ClientToken::load(f) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("raftkv: --token-file: {e}");
                return Err(EXIT_USAGE);
            }
        },
        None => None,
    };
    let client = Client::new(
        endpoints.clone(),
        ClientOptions {
            timeout: Duration::from_millis(c.timeout_ms),
            consistency,
            attempt_timeout: Duration::from_millis(c.attempt_timeout_ms),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            max_frame: c.max_frame,
            token,
        },
    );
    let client = match &c.tls_ca {
        Some(ca) => match raftkv::net::tls::client_config(ca, None) {
            Ok(cfg) => client.with_tls(cfg),
            Err(e) => {
                eprintln!("raftkv: --tls-ca: {e}");
                return Err(EXIT_USAGE);
            }
        },
        None => client,
    };
    Ok((client, endpoints))
}

/// Hands a request's result to its printer (which returns the exit code), or fails.
fn report<R>(r: Result<R, ClientError>, json: bool, show: impl FnOnce(&R, bool) -> u8) -> u8 {
    match r {
        Ok(r) => show(&r, json),
        Err(e) => fail(e, json),
    }
}

/// One page of `req`'s range, or with `all` every page, then the continuation key.
fn scan(client: &mut Client, mut req: kvpb::Scan, all: bool, json: bool) -> u8 {
    let mut kvs = Vec::new();
    let next = loop {
        match client.scan(req.clone()) {
            Ok(r) => {
                kvs.extend(r.kvs);
                if all && !r.next_key.is_empty() {
                    req.start = r.next_key;
                    continue;
                }
                break r.next_key;
            }
            Err(e) => return fail(e, json),
        }
    };
    output::scan(&kvs, &next, req.keys_only, json)
}

/// Asks every endpoint (not just the leader) for its status; exit 3 if none answered.
fn status(client: &mut Client, endpoints: &[String], json: bool) -> u8 {
    let mut answered = 0;
    let mut items = Vec::new();
    for ep in endpoints {
        let r = client.status(ep);
        if r.is_ok() {
            answered += 1;
        }
        if json {
            items.push(output::status_json(ep, &r));
        } else {
            output::print_status(ep, &r);
        }
    }
    if json {
        println!("[{}]", items.join(","));
    }
    if answered == 0 {
        EXIT_UNAVAILABLE
    } else {
        EXIT_OK
    }
}
