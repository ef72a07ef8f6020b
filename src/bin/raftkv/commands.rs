//! The client commands — put, get, del, cas, scan, status — one function each: send the
//! request through `raftkv::client::Client` (which follows the leader and retries until
//! --timeout-ms), hand the result to `output`, return the exit code.

use crate::args::{ClientArgs, Cmd};
use crate::output::{self, fail, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE};
use raftkv::client::{Client, ClientError, ClientOptions};
use raftkv::pb::kvpb;
use std::time::Duration;

/// Runs a client command (not `serve` or `cluster`) and returns its exit code.
pub fn run(cmd: Cmd) -> u8 {
    let (c, consistency) = match &cmd {
        Cmd::Put { c, .. } | Cmd::Del { c, .. } | Cmd::Cas { c, .. } | Cmd::Status { c } => {
            (c, kvpb::Consistency::Linearizable)
        }
        Cmd::Get { c, consistency, .. } | Cmd::Scan { c, consistency, .. } => {
            (c, (*consistency).into())
        }
        Cmd::Serve(_) | Cmd::Cluster(_) => unreachable!("handled in main"),
    };
    let json = c.json;
    let (mut client, endpoints) = match connect(c, consistency) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let client = &mut client;
    match cmd {
        Cmd::Put { key, value, .. } => put(client, &key, &value, json),
        Cmd::Get { key, .. } => get(client, &key, json),
        Cmd::Del { key, .. } => del(client, &key, json),
        Cmd::Cas {
            key,
            value,
            expect_version,
            delete,
            ..
        } => cas(client, key, value, expect_version, delete, json),
        Cmd::Scan {
            prefix,
            start,
            end,
            limit,
            keys_only,
            all,
            ..
        } => {
            let req = kvpb::Scan {
                start: start.into_bytes().into(),
                end: end.into_bytes().into(),
                prefix: prefix.into_bytes().into(),
                limit,
                keys_only,
            };
            scan(client, req, all, json)
        }
        Cmd::Status { .. } => status(client, &endpoints, json),
        Cmd::Serve(_) | Cmd::Cluster(_) => unreachable!("handled in main"),
    }
}

/// A client for --endpoints (connecting lazily) and the endpoints; exit 2 if there are none.
fn connect(c: &ClientArgs, consistency: kvpb::Consistency) -> Result<(Client, Vec<String>), u8> {
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
    let client = Client::new(
        endpoints.clone(),
        ClientOptions {
            timeout: Duration::from_millis(c.timeout_ms),
            consistency,
            attempt_timeout: Duration::from_millis(c.attempt_timeout_ms),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            max_frame: c.max_frame,
        },
    );
    Ok((client, endpoints))
}

/// Hands a request's result to its printer (which returns the exit code), or fails.
fn report<R>(r: Result<R, ClientError>, json: bool, show: impl FnOnce(&R, bool) -> u8) -> u8 {
    match r {
        Ok(r) => show(&r, json),
        Err(e) => fail(e, json),
    }
}

fn put(client: &mut Client, key: &str, value: &str, json: bool) -> u8 {
    report(
        client.put(key.as_bytes(), value.as_bytes()),
        json,
        output::put,
    )
}

fn get(client: &mut Client, key: &str, json: bool) -> u8 {
    report(client.get(key.as_bytes()), json, |r, json| {
        output::get(key, r, json)
    })
}

fn del(client: &mut Client, key: &str, json: bool) -> u8 {
    report(client.delete(key.as_bytes()), json, |r, json| {
        output::del(key, r, json)
    })
}

fn cas(
    client: &mut Client,
    key: String,
    value: Option<String>,
    expect_version: u64,
    delete: bool,
    json: bool,
) -> u8 {
    if delete == value.is_some() {
        eprintln!("raftkv cas: give either VALUE or --delete");
        return EXIT_USAGE;
    }
    let req = kvpb::Cas {
        key: key.into_bytes().into(),
        expected_version: expect_version,
        value: value.unwrap_or_default().into_bytes().into(),
        delete,
    };
    report(client.cas(req), json, output::cas)
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
