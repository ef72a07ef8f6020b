//! Membership changes made safe to retry: [`Client::member_change_once`], the one place that
//! decides whether a change refused as "already done" is in force (the CLI's `member` and
//! `cluster` commands, `serve --join`, the tests).

use super::{Client, ClientError};
use crate::pb::kvpb::{self, member_op::Kind};

impl Client {
    /// [`Client::member_change`], and a refusal that says the change is made already counts as
    /// done. The client retries a change whose first answer was uncertain (the leader removed
    /// itself and stepped down before answering, a connection lost); the retry then finds it
    /// made and is refused (BAD_REQUEST "already a ...", "was removed already"). Then the
    /// configuration is read back, and the change counts as made if every operation in it is
    /// in force; otherwise the refusal is returned. Returns the configuration's index. With
    /// `expected_conf_index` a retry is refused with CONFLICT instead, and returned as is.
    pub fn member_change_once(&mut self, change: kvpb::MemberChange) -> Result<u64, ClientError> {
        let ops = change.ops.clone();
        let err = match self.member_change(change) {
            Ok(r) => return Ok(r.conf_index),
            Err(e @ ClientError::Server(_)) if is_bad_request(&e) => e,
            Err(e) => return Err(e),
        };
        match self.member_list() {
            Ok(list) if !ops.is_empty() && ops.iter().all(|op| in_force(&list, op)) => {
                Ok(list.conf_index)
            }
            _ => Err(err),
        }
    }
}

fn is_bad_request(e: &ClientError) -> bool {
    matches!(e, ClientError::Server(err) if err.code() == kvpb::ErrorCode::BadRequest)
}

/// Whether the configuration in `list` is what `op` asks for.
fn in_force(list: &kvpb::MemberListResponse, op: &kvpb::MemberOp) -> bool {
    let found = list.members.iter().find(|m| m.id == op.id);
    let role = found.map(|m| m.role.as_str());
    match Kind::try_from(op.kind) {
        // Added (and maybe promoted already) at the address asked for.
        Ok(Kind::Add) => found.is_some_and(|m| m.peer_addr == op.peer_addr),
        Ok(Kind::AddLearner) => role == Some("learner"),
        Ok(Kind::Promote) => role == Some("voter"),
        Ok(Kind::Remove) => role.is_none() && list.removed.contains(&op.id),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, role: &str, peer: &str) -> kvpb::MemberInfo {
        kvpb::MemberInfo {
            id,
            role: role.into(),
            peer_addr: peer.into(),
            ..Default::default()
        }
    }

    /// What counts as "the change is in force" when a retried change is refused as done.
    #[test]
    fn in_force_matches_each_kind() {
        let list = kvpb::MemberListResponse {
            members: vec![member(1, "voter", "a:1"), member(4, "learner", "d:1")],
            removed: vec![3],
            ..Default::default()
        };
        let op = |kind: Kind, id: u64, peer: &str| kvpb::MemberOp {
            kind: kind as i32,
            id,
            peer_addr: peer.into(),
            ..Default::default()
        };
        assert!(in_force(&list, &op(Kind::Add, 4, "d:1")));
        assert!(!in_force(&list, &op(Kind::Add, 5, "e:1")));
        assert!(
            !in_force(&list, &op(Kind::Add, 4, "x:1")),
            "another node's id"
        );
        assert!(in_force(&list, &op(Kind::AddLearner, 4, "d:1")));
        assert!(!in_force(&list, &op(Kind::Promote, 4, "")));
        assert!(in_force(&list, &op(Kind::Promote, 1, "")));
        assert!(in_force(&list, &op(Kind::Remove, 3, "")));
        assert!(
            !in_force(&list, &op(Kind::Remove, 2, "")),
            "2 was never a member"
        );
    }
}
