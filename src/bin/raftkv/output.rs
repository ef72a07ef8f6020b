//! What the client commands print, as text for people or as one line of JSON (`--json`), and
//! the exit codes: the hand-written JSON helpers (no serde in this crate), one printer per
//! command's result, and `fail`, which prints a client error and maps it to an exit code.
//! Text results go to stdout; "not found", "CAS failed" and errors go to stderr (in JSON
//! mode everything goes to stdout).

use crate::escape;
use raftkv::client::ClientError;
use raftkv::pb::kvpb::{self, ErrorCode};
use std::io::Write;
use std::path::Path;

pub const EXIT_OK: u8 = 0;
pub const EXIT_NOT_FOUND: u8 = 1;
/// `snapshot save / restore`: the file is damaged or cannot be written, or the data directory
/// is not empty (the same code as "not found": the command did not do what was asked).
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNAVAILABLE: u8 = 3;
pub const EXIT_REJECTED: u8 = 4;

/// `"name":"text"` if `b` is valid UTF-8, else `"name_hex":"hex digits"`: binary keys and
/// values in JSON output (exactly one of the two fields is present).
pub fn json_bytes(name: &str, b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => format!("\"{name}\":{}", json_str(s.as_bytes())),
        Err(_) => format!("\"{name}_hex\":\"{}\"", escape::hex(b)),
    }
}

pub use raftkv::json::json_str;

/// Prints a client error and maps it to an exit code.
pub fn fail(e: ClientError, json: bool) -> u8 {
    let code = match &e {
        ClientError::Timeout(_) | ClientError::Io(_) => EXIT_UNAVAILABLE,
        ClientError::Server(err) => match err.code() {
            ErrorCode::NotLeader
            | ErrorCode::Timeout
            | ErrorCode::Unavailable
            | ErrorCode::Uncertain
            | ErrorCode::ShuttingDown => EXIT_UNAVAILABLE,
            _ => EXIT_REJECTED,
        },
    };
    if json {
        println!(
            "{{\"ok\":false,\"error\":{}}}",
            json_str(e.to_string().as_bytes())
        );
    } else {
        eprintln!("raftkv: {e}");
    }
    code
}

/// The exit code of a command that found its key (or whose CAS held): 0, else 1.
fn found_or_not(found: bool) -> u8 {
    if found {
        EXIT_OK
    } else {
        EXIT_NOT_FOUND
    }
}

fn not_found(key: &[u8]) {
    eprintln!("raftkv: key \"{}\" not found", escape::escape(key, false));
}

/// Prints a put's new version; exit 0.
pub fn put(r: &kvpb::PutResponse, json: bool) -> u8 {
    if json {
        println!("{{\"ok\":true,\"version\":{}}}", r.version);
    } else {
        println!("OK (version {})", r.version);
    }
    EXIT_OK
}

/// Prints the value read (exit 0) or that the key is absent (exit 1). Text: the value's
/// bytes unchanged and a newline, or with `out` exactly the bytes to that file (`-`: stdout).
pub fn get(key: &[u8], r: &kvpb::GetResponse, json: bool, out: Option<&Path>) -> u8 {
    if !r.found {
        if json {
            println!(
                "{{\"ok\":true,\"found\":false,{},\"value\":null,\"version\":{}}}",
                json_bytes("key", key),
                r.version
            );
        } else {
            not_found(key);
        }
        return found_or_not(false);
    }
    let written = match (out, json) {
        (Some(p), _) if p != Path::new("-") => std::fs::write(p, &r.value)
            .map_err(|e| format!("writing the value to {}: {e}", p.display())),
        (Some(_), _) => write_stdout(&[&r.value]),
        (None, false) => write_stdout(&[&r.value, b"\n"]),
        (None, true) => Ok(()),
    };
    if let Err(e) = written {
        eprintln!("raftkv: {e}");
        return EXIT_USAGE;
    }
    if json {
        let value = match out {
            // The value went to the file; JSON reports where and how much.
            Some(p) => format!(
                "\"out\":{},\"value_bytes\":{}",
                json_str(p.as_os_str().as_encoded_bytes()),
                r.value.len()
            ),
            None => json_bytes("value", &r.value),
        };
        println!(
            "{{\"ok\":true,\"found\":true,{},{value},\"version\":{}}}",
            json_bytes("key", key),
            r.version
        );
    }
    EXIT_OK
}

fn write_stdout(parts: &[&[u8]]) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    parts
        .iter()
        .try_for_each(|p| out.write_all(p))
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing to standard output: {e}"))
}

/// Prints that the key was deleted (exit 0) or was absent (exit 1).
pub fn del(key: &[u8], r: &kvpb::DeleteResponse, json: bool) -> u8 {
    if json {
        println!("{{\"ok\":true,\"deleted\":{}}}", r.deleted);
    } else if r.deleted {
        println!("deleted");
    } else {
        not_found(key);
    }
    found_or_not(r.deleted)
}

/// The NO_SPACE alarm's state (`raftkv alarm list|disarm`); exit 0.
pub fn alarm(s: &kvpb::StatusResponse, json: bool) -> u8 {
    if json {
        println!(
            "{{\"ok\":true,\"no_space_alarm\":{},\"raised_by\":{}}}",
            s.no_space_alarm, s.alarm_raised_by
        );
    } else if s.no_space_alarm {
        println!("NO_SPACE alarm raised by node {}", s.alarm_raised_by);
    } else {
        println!("no alarm");
    }
    EXIT_OK
}

/// Prints the new version (exit 0) or, if the comparison failed, the current one (exit 1).
pub fn cas(r: &kvpb::CasResponse, json: bool) -> u8 {
    if json {
        println!(
            "{{\"ok\":true,\"succeeded\":{},\"version\":{}}}",
            r.succeeded, r.version
        );
    } else if r.succeeded {
        println!("OK (version {})", r.version);
    } else {
        eprintln!("raftkv: CAS failed: current version is {}", r.version);
    }
    found_or_not(r.succeeded)
}

/// Prints the pairs of a scan (all pages fetched) and its continuation key (empty: no more
/// keys); exit 0. Text: `KEY = VALUE` lines in the escape syntax (see `escape`), which
/// round-trip through `raftkv put --escaped`.
pub fn scan(kvs: &[kvpb::KeyValue], next: &[u8], keys_only: bool, json: bool) -> u8 {
    if json {
        println!("{}", scan_json(kvs, next, keys_only));
        return EXIT_OK;
    }
    let mut text = String::new();
    for kv in kvs {
        text.push_str(&escape::escape(&kv.key, true));
        if !keys_only {
            text.push_str(" = ");
            text.push_str(&escape::escape(&kv.value, false));
        }
        text.push('\n');
    }
    if let Err(e) = write_stdout(&[text.as_bytes()]) {
        eprintln!("raftkv: {e}");
        return EXIT_USAGE;
    }
    if !next.is_empty() {
        // Escaped form in single quotes: safe to paste into a shell (`'` itself is `'\''`).
        let start = escape::escape(next, false).replace('\'', "'\\''");
        eprintln!("(more keys: continue with --escaped --start '{start}', or use --all)");
    }
    EXIT_OK
}

fn scan_json(kvs: &[kvpb::KeyValue], next: &[u8], keys_only: bool) -> String {
    let items: Vec<String> = kvs
        .iter()
        .map(|kv| {
            if keys_only {
                format!("{{{}}}", json_bytes("key", &kv.key))
            } else {
                format!(
                    "{{{},{},\"version\":{}}}",
                    json_bytes("key", &kv.key),
                    json_bytes("value", &kv.value),
                    kv.version
                )
            }
        })
        .collect();
    format!(
        "{{\"ok\":true,\"kvs\":[{}],{}}}",
        items.join(","),
        json_bytes("next_key", next)
    )
}

/// One endpoint's line(s) of `status` text: its status, or that it did not answer.
pub fn print_status(ep: &str, r: &Result<kvpb::StatusResponse, ClientError>) {
    let s = match r {
        Ok(s) => s,
        Err(e) => {
            println!("{ep}: unreachable ({e})");
            return;
        }
    };
    let leader = match s.leader_id {
        0 => "none".to_string(),
        l if s.leader_addr.is_empty() => l.to_string(),
        l => format!("{l} ({})", s.leader_addr),
    };
    println!(
        "{ep}: node {} {} term {} leader {leader} commit {} applied {} log {}..{} snapshot {} \
         cluster {}",
        s.node_id,
        s.role,
        s.term,
        s.commit_index,
        s.applied_index,
        s.first_log_index,
        s.last_log_index,
        s.snapshot_index,
        if s.cluster_id.is_empty() {
            "unknown"
        } else {
            &s.cluster_id
        }
    );
    if s.no_space_alarm {
        println!("    NO_SPACE alarm raised (by node {})", s.alarm_raised_by);
    }
    if !s.space_problem.is_empty() {
        println!("    space problem: {}", s.space_problem);
    }
    println!("    {}", conf_line(s));
    for p in &s.peers {
        println!(
            "    peer {} ({}) match {} next {}",
            p.id, p.peer_addr, p.match_index, p.next_index
        );
    }
}

/// `configuration (entry N): voters [..] learners [..]`, and the outgoing half while joint.
fn conf_line(s: &kvpb::StatusResponse) -> String {
    let mut line = format!(
        "configuration (entry {}): voters {:?} learners {:?}",
        s.conf_index, s.voters, s.learners
    );
    if !s.voters_outgoing.is_empty() {
        line.push_str(&format!(" JOINT, outgoing voters {:?}", s.voters_outgoing));
    }
    line
}

/// One endpoint's object in the `status --json` array: its status, or the error.
pub fn status_json(ep: &str, r: &Result<kvpb::StatusResponse, ClientError>) -> String {
    let s = match r {
        Ok(s) => s,
        Err(e) => {
            return format!(
                "{{\"endpoint\":{},\"error\":{}}}",
                json_str(ep.as_bytes()),
                json_str(e.to_string().as_bytes())
            )
        }
    };
    raftkv::json::status_json(Some(ep), s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes() {
        assert_eq!(json_str(b"a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(json_str(&[1]), "\"\\u0001\"");
    }

    #[test]
    fn binary_json_fields_are_hex() {
        assert_eq!(json_bytes("value", b"a\0"), r#""value":"a\u0000""#);
        assert_eq!(json_bytes("value", b"\xff\x00"), r#""value_hex":"ff00""#);
        let kvs = [kvpb::KeyValue {
            key: b"\xfe".to_vec().into(),
            value: "v".into(),
            version: 1,
        }];
        assert_eq!(
            scan_json(&kvs, b"", false),
            r#"{"ok":true,"kvs":[{"key_hex":"fe","value":"v","version":1}],"next_key":""}"#
        );
    }

    #[test]
    fn scan_json_shape() {
        let kvs = [kvpb::KeyValue {
            key: "a\"".into(),
            value: "v".into(),
            version: 3,
        }];
        assert_eq!(
            scan_json(&kvs, b"b", false),
            r#"{"ok":true,"kvs":[{"key":"a\"","value":"v","version":3}],"next_key":"b"}"#
        );
        assert_eq!(
            scan_json(&kvs, b"", true),
            r#"{"ok":true,"kvs":[{"key":"a\""}],"next_key":""}"#
        );
    }

    #[test]
    fn status_json_shape() {
        let s = kvpb::StatusResponse {
            node_id: 2,
            role: "leader".into(),
            term: 5,
            leader_id: 2,
            leader_addr: "h:1".into(),
            commit_index: 9,
            applied_index: 8,
            first_log_index: 1,
            last_log_index: 10,
            snapshot_index: 0,
            cluster_id: "0123".into(),
            peers: vec![kvpb::PeerStatus {
                id: 1,
                peer_addr: "h:4".into(),
                match_index: 7,
                next_index: 8,
            }],
            no_space_alarm: true,
            alarm_raised_by: 3,
            space_problem: "disk full".into(),
            state_bytes: 11,
            data_dir_bytes: 12,
            quota_bytes: 13,
            voters: vec![1, 2],
            learners: vec![4],
            conf_index: 6,
            ..Default::default()
        };
        assert_eq!(
            status_json("e:1", &Ok(s)),
            concat!(
                r#"{"endpoint":"e:1","node_id":2,"role":"leader","term":5,"leader_id":2,"#,
                r#""leader_addr":"h:1","commit":9,"applied":8,"first_log_index":1,"#,
                r#""last_log_index":10,"snapshot_index":0,"no_space_alarm":true,"#,
                r#""alarm_raised_by":3,"space_problem":"disk full","state_bytes":11,"#,
                r#""data_dir_bytes":12,"quota_bytes":13,"cluster_id":"0123","#,
                r#""peers":[{"id":1,"peer_addr":"h:4","match":7,"next":8}],"#,
                r#""voters":[1,2],"learners":[4],"voters_outgoing":[],"conf_index":6}"#
            )
        );
        let down = Err(ClientError::Timeout("gone".into()));
        assert_eq!(
            status_json("e:1", &down),
            format!(
                r#"{{"endpoint":"e:1","error":{}}}"#,
                json_str(b"timed out: gone")
            )
        );
    }
}
