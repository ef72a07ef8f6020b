//! Node identity and joining, checked by `raftkv serve` before the node starts (with the
//! client library, against the running cluster; docs/membership.md):
//! - a node whose data directory is empty must not come back as a voter of a cluster that
//!   already exists: it would have forgotten its vote (and the entries it acknowledged), so
//!   two leaders could be elected in one term. It refuses unless it joins under a new id.
//! - `--join`: the cluster is asked to add this node as a learner to be promoted once caught
//!   up; the node then starts from an empty configuration and learns it from the leader.

use raftkv::client::{Client, ClientOptions};
use raftkv::pb::kvpb::{self, member_op::Kind};
use raftkv::server::{PeerSpec, ServerConfig};
use std::path::Path;
use std::time::Duration;

/// How long the identity check waits for each member's status: a member that does not answer
/// in this time is taken as not running (a brand-new cluster starts all its nodes at once).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Deadline for the join request: one leader election plus the change's commit, with room.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether the data directory holds no Raft state: no hard state, or one that never saw a
/// term (a node that has voted, acknowledged an entry or installed a snapshot has a term).
pub fn is_fresh(data_dir: &Path) -> Result<bool, String> {
    match raftkv::storage::hardstate::read(data_dir) {
        Ok(hs) => Ok(hs.is_none_or(|h| h.term == 0)),
        Err(e) => Err(format!(
            "reading the hard state in {}: {e}",
            data_dir.display()
        )),
    }
}

/// Refuses to start a fresh node into a cluster that exists already (see the module doc): any
/// other `--peers` member that answers with a term or a log means the cluster has run.
pub fn check_identity(cfg: &ServerConfig) -> Result<(), String> {
    for p in cfg.peers.iter().filter(|p| p.id != cfg.id) {
        let Some(addr) = &p.client_addr else { continue };
        let mut client = tls_client(cfg, Client::new(vec![addr.clone()], probe_options()));
        let Ok(s) = client.status(addr) else { continue };
        if s.term > 0 || s.last_log_index > 0 {
            return Err(format!(
                "the data directory {} is empty, but the cluster in --peers already exists \
                 (node {} at {addr} is in term {} with log up to {}). Node {} would come \
                 back without its vote and could help elect two leaders in one term. To \
                 replace it, remove it (`raftkv member remove {}`) and start this node with a \
                 NEW --id and --join; to keep node {}, restore its data directory",
                cfg.data_dir.display(),
                s.node_id,
                s.term,
                s.last_log_index,
                cfg.id,
                cfg.id,
                cfg.id
            ));
        }
    }
    Ok(())
}

/// The other nodes' client ports speak TLS when this node's does (`NodeTls::forward`).
fn tls_client(cfg: &ServerConfig, client: Client) -> Client {
    match &cfg.tls.forward {
        Some(tls) => client.with_tls(tls.clone()),
        None => client,
    }
}

fn probe_options() -> ClientOptions {
    ClientOptions {
        timeout: PROBE_TIMEOUT,
        attempt_timeout: PROBE_TIMEOUT,
        connect_timeout: PROBE_TIMEOUT,
        ..Default::default()
    }
}

/// Asks the cluster at `endpoints` to add `cfg`'s node as a learner to promote, after checking
/// that its id is new; sets `cfg` up to start empty, linked to the listed members.
pub fn join(cfg: &mut ServerConfig, endpoints: &str) -> Result<(), String> {
    let endpoints: Vec<String> = endpoints
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if endpoints.is_empty() {
        return Err("--join needs the client endpoints of the running cluster".into());
    }
    let opts = ClientOptions {
        timeout: JOIN_TIMEOUT,
        // The cluster requires the token this node will require: its own.
        token: cfg.client_token.clone(),
        ..Default::default()
    };
    let mut client = tls_client(cfg, Client::new(endpoints.clone(), opts));
    let list = client
        .member_list()
        .map_err(|e| format!("asking {endpoints:?} for the members: {e}"))?;
    let id = cfg.id;
    if list.removed.contains(&id) {
        return Err(format!(
            "node id {id} was removed from this cluster and is never reused: pick a new --id"
        ));
    }
    let earlier = list.members.iter().find(|m| m.id == id);
    if earlier.is_some_and(|m| m.role == "learner" && m.peer_addr == cfg.peer_listen) {
        // An earlier --join of this node whose answer was lost (or that stopped before the
        // node started): a learner never voted, so an empty data directory forgets nothing.
        log::info!("node {id} is already a learner at this address (an earlier --join): starting");
        set_up_join(cfg, &list);
        return Ok(());
    }
    if earlier.is_some() {
        return Err(format!(
            "node {id} is already a member of this cluster; a member restarts from its own data \
             directory (a wiped one must join under a new id after `raftkv member remove {id}`)"
        ));
    }
    let op = kvpb::MemberOp {
        kind: Kind::Add as i32,
        id,
        peer_addr: cfg.peer_listen.clone(),
        client_addr: cfg.client_listen.clone(),
    };
    let change = kvpb::MemberChange {
        ops: vec![op],
        expected_conf_index: list.conf_index,
    };
    let conf_index = client
        .member_change_once(change)
        .map_err(|e| format!("asking the cluster to add node {id}: {e}"))?;
    log::info!(
        "joined: node {id} added as a learner (configuration entry {conf_index}), to be \
         promoted once caught up"
    );
    set_up_join(cfg, &list);
    Ok(())
}

/// Starts empty (the configuration comes from the leader), linked to the listed members.
fn set_up_join(cfg: &mut ServerConfig, list: &kvpb::MemberListResponse) {
    cfg.join = true;
    cfg.peers = list
        .members
        .iter()
        .filter(|m| m.id != cfg.id)
        .map(|m| PeerSpec {
            id: m.id,
            peer_addr: m.peer_addr.clone(),
            client_addr: (!m.client_addr.is_empty()).then(|| m.client_addr.clone()),
            // Not in the member list: a joined node's -NOTLEADER names no RESP address.
            redis_addr: None,
        })
        .collect();
}
