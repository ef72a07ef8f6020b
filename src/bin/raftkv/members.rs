//! The membership commands — `member list|add|promote|remove` and `leader transfer` — and what
//! they print. Requests go through `raftkv::client::Client` (to the leader, retried while
//! there is none or another change is in flight); exit codes as in `output`.

use crate::args::{CondArgs, LeaderCmd, MemberCmd};
use crate::commands::connect;
use crate::output::{fail, json_str, EXIT_OK, EXIT_USAGE};
use raftkv::client::{Client, ClientError};
use raftkv::pb::kvpb::{self, member_op::Kind};
use std::time::{Duration, Instant};

/// Runs a `member` command; returns its exit code.
pub fn member(cmd: MemberCmd) -> u8 {
    let (c, op, cond) = match cmd {
        MemberCmd::List { c } => {
            let json = c.json;
            let Ok((mut client, _)) = connect(&c, kvpb::Consistency::Linearizable) else {
                return EXIT_USAGE;
            };
            return match client.member_list() {
                Ok(r) => print_list(&r, json),
                Err(e) => fail(e, json),
            };
        }
        MemberCmd::Add {
            id,
            addrs,
            learner,
            cond,
            c,
        } => {
            let (peer_addr, client_addr) = match addrs.split_once('/') {
                Some((p, c)) => (p.to_string(), c.to_string()),
                None => (addrs.clone(), String::new()),
            };
            if let Err(e) = raftkv::server::parse_peers(&format!("{id}={addrs}")) {
                eprintln!("raftkv member add: {e}");
                return EXIT_USAGE;
            }
            let kind = if learner { Kind::AddLearner } else { Kind::Add };
            let op = kvpb::MemberOp {
                kind: kind as i32,
                id,
                peer_addr,
                client_addr,
            };
            (c, op, cond)
        }
        MemberCmd::Promote { id, cond, c } => (c, simple_op(Kind::Promote, id), cond),
        MemberCmd::Remove { id, cond, c } => (c, simple_op(Kind::Remove, id), cond),
    };
    let json = c.json;
    let Ok((mut client, _)) = connect(&c, kvpb::Consistency::Linearizable) else {
        return EXIT_USAGE;
    };
    let change = kvpb::MemberChange {
        ops: vec![op],
        expected_conf_index: expected(cond),
    };
    match client.member_change_once(change) {
        Ok(conf_index) => {
            if json {
                println!("{{\"ok\":true,\"conf_index\":{conf_index}}}");
            } else {
                println!("OK (configuration entry {conf_index})");
            }
            EXIT_OK
        }
        Err(e) => fail(e, json),
    }
}

fn simple_op(kind: Kind, id: u64) -> kvpb::MemberOp {
    kvpb::MemberOp {
        kind: kind as i32,
        id,
        ..Default::default()
    }
}

fn expected(cond: CondArgs) -> u64 {
    cond.expected_conf_index.unwrap_or(0)
}

/// Prints `member list`'s answer; exit 0.
fn print_list(r: &kvpb::MemberListResponse, json: bool) -> u8 {
    if json {
        println!("{}", list_json(r));
        return EXIT_OK;
    }
    let joint = if r.joint {
        "joint (changing)"
    } else {
        "not joint"
    };
    println!(
        "configuration at index {}, {joint}, leader {}",
        r.conf_index, r.leader_id
    );
    println!(
        "{:>6}  {:<9} {:<22} {:<22} {:>9}  {:<9} PROMOTE",
        "ID", "ROLE", "PEER_ADDR", "CLIENT_ADDR", "MATCH", "CAUGHT_UP"
    );
    for m in &r.members {
        println!(
            "{:>6}  {:<9} {:<22} {:<22} {:>9}  {:<9} {}",
            m.id,
            m.role,
            m.peer_addr,
            if m.client_addr.is_empty() {
                "-"
            } else {
                &m.client_addr
            },
            m.match_index,
            if m.caught_up { "yes" } else { "no" },
            if m.promote { "yes" } else { "no" }
        );
    }
    if !r.removed.is_empty() {
        println!("removed (ids never reused): {:?}", r.removed);
    }
    EXIT_OK
}

fn list_json(r: &kvpb::MemberListResponse) -> String {
    let members: Vec<String> = r
        .members
        .iter()
        .map(|m| {
            format!(
                "{{\"id\":{},\"role\":{},\"peer_addr\":{},\"client_addr\":{},\"match\":{},\
                 \"caught_up\":{},\"promote\":{}}}",
                m.id,
                json_str(m.role.as_bytes()),
                json_str(m.peer_addr.as_bytes()),
                json_str(m.client_addr.as_bytes()),
                m.match_index,
                m.caught_up,
                m.promote
            )
        })
        .collect();
    let removed: Vec<String> = r.removed.iter().map(u64::to_string).collect();
    format!(
        "{{\"ok\":true,\"conf_index\":{},\"joint\":{},\"leader_id\":{},\"members\":[{}],\
         \"removed\":[{}]}}",
        r.conf_index,
        r.joint,
        r.leader_id,
        members.join(","),
        removed.join(",")
    )
}

/// Runs a `leader` command; returns its exit code.
pub fn leader(cmd: LeaderCmd) -> u8 {
    let LeaderCmd::Transfer { id, c } = cmd;
    let json = c.json;
    let deadline = Instant::now() + Duration::from_millis(c.timeout_ms);
    let Ok((mut client, _)) = connect(&c, kvpb::Consistency::Linearizable) else {
        return EXIT_USAGE;
    };
    let old = match client.leader_status() {
        Ok(s) => s.leader_id,
        Err(e) => return fail(e, json),
    };
    if id.is_some_and(|to| to == old) {
        return print_leader(old, old, Duration::ZERO, json);
    }
    let start = Instant::now();
    let to = match client.leader_transfer(id.unwrap_or(0)) {
        Ok(to) => to,
        Err(e) => return fail(e, json),
    };
    match wait_new_leader(&mut client, old, deadline) {
        Some(new) => print_leader(old, new, start.elapsed(), json),
        None => fail(
            ClientError::Timeout(format!(
                "leadership did not move from node {old} to node {to} within {} ms \
                 (a transfer the target does not finish within an election timeout is dropped)",
                c.timeout_ms
            )),
            json,
        ),
    }
}

/// Polls the cluster until a leader other than `old` is in office; `None` at the deadline.
fn wait_new_leader(client: &mut Client, old: u64, deadline: Instant) -> Option<u64> {
    while Instant::now() < deadline {
        if let Ok(s) = client.leader_status() {
            if s.role == "leader" && s.node_id != old {
                return Some(s.node_id);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn print_leader(old: u64, new: u64, took: Duration, json: bool) -> u8 {
    if json {
        println!(
            "{{\"ok\":true,\"old_leader\":{old},\"leader\":{new},\"ms\":{}}}",
            took.as_millis()
        );
    } else if old == new {
        println!("node {new} is already the leader");
    } else {
        println!(
            "leader is now node {new} (was {old}; took {} ms)",
            took.as_millis()
        );
    }
    EXIT_OK
}
