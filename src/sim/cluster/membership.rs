//! The membership schedule of a simulated run (`SimOptions::membership`): the operator's
//! changes, sent to the leader as a client of the server would (`Input::Member` goes through
//! the node layer's `change_members`, the same code the server runs), interleaved with every
//! other fault. New nodes get new ids (an id is never reused); a node told it was removed is
//! retired (the server exits).

use super::{new_node, World, MAX_MEMBERS, MIN_VOTERS};
use crate::pb::kvpb::{self, member_op::Kind};
use crate::raft::{ConfState, Role};
use crate::sim::node::Input;

fn op(kind: Kind, id: u64) -> kvpb::MemberOp {
    kvpb::MemberOp {
        kind: kind as i32,
        id,
        // The simulated network routes by id; the address only has to be present.
        peer_addr: format!("sim-{id}"),
        client_addr: String::new(),
    }
}

impl World {
    /// The current leader, if one is up and leading.
    pub(super) fn leader(&self) -> Option<u64> {
        self.ids().into_iter().find(|&i| {
            self.nodes[(i - 1) as usize]
                .role()
                .is_some_and(|r| r.0 == Role::Leader)
        })
    }

    /// One random membership change, asked of the leader (nothing if there is none).
    pub(super) fn membership_fault(&mut self) -> Result<(), String> {
        let Some(l) = self.leader() else {
            return Ok(());
        };
        let Some(conf) = self.nodes[(l - 1) as usize]
            .rep
            .as_ref()
            .map(|r| r.core().conf_state().1.clone())
        else {
            return Ok(());
        };
        let Some(ops) = self.pick_change(l, &conf) else {
            return Ok(());
        };
        let change = kvpb::MemberChange {
            ops,
            expected_conf_index: 0,
        };
        self.node_input(l, Input::Member(change))
    }

    /// What to change, given the leader's configuration.
    fn pick_change(&mut self, leader: u64, conf: &ConfState) -> Option<Vec<kvpb::MemberOp>> {
        let members = conf.voters.len() + conf.learners.len();
        let (voters, learners) = (conf.voters.clone(), conf.learners.clone());
        let pick = |w: &mut World, v: &[u64]| v[w.rng.range(0, v.len() as u64) as usize];
        let roll = self.rng.range(0, 100);
        let can_add = members < MAX_MEMBERS;
        if (roll < 30 || learners.is_empty() && roll < 70) && can_add {
            // A new node joins as a learner, promoted automatically or left one.
            let id = self.add_node();
            let kind = if self.rng.chance(0.5) {
                Kind::Add
            } else {
                Kind::AddLearner
            };
            return Some(vec![op(kind, id)]);
        }
        if roll < 50 && !learners.is_empty() {
            // Promote one learner, or two at once (a joint change).
            let a = pick(self, &learners);
            let mut ops = vec![op(Kind::Promote, a)];
            if learners.len() > 1 && self.rng.chance(0.5) {
                let b = learners.iter().copied().find(|&b| b != a)?;
                ops.push(op(Kind::Promote, b));
            }
            return Some(ops);
        }
        if roll < 70 && !learners.is_empty() {
            // Replace a voter (preferably a crashed one) by a learner: a joint change.
            let down: Vec<u64> = voters
                .iter()
                .copied()
                .filter(|&v| !self.nodes[(v - 1) as usize].up)
                .collect();
            let old = if down.is_empty() {
                pick(self, &voters)
            } else {
                pick(self, &down)
            };
            let new = pick(self, &learners);
            return Some(vec![op(Kind::Remove, old), op(Kind::Promote, new)]);
        }
        if roll < 88 && voters.len() > MIN_VOTERS {
            // Remove a voter; a third of the time the leader itself.
            let v = if self.rng.chance(0.33) {
                leader
            } else {
                pick(self, &voters)
            };
            return Some(vec![op(Kind::Remove, v)]);
        }
        if !learners.is_empty() {
            let v = pick(self, &learners);
            return Some(vec![op(Kind::Remove, v)]);
        }
        None
    }

    /// Creates and starts a new node with the next unused id and an empty configuration (it
    /// learns the configuration from the leader); returns its id.
    fn add_node(&mut self) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let settings = (self.pre_vote, self.check_quorum);
        let (node, tick) = new_node(&mut self.rng, id, Vec::new(), &self.opts, settings);
        self.nodes.push(node);
        self.tick_ms.push(tick);
        for c in &mut self.clients {
            c.set_nodes(id);
        }
        self.log(format!("NEW node {id} (empty data directory)"));
        if let Err(e) = self.restart(id) {
            // A fresh node always starts; a failure here is a simulator bug.
            self.log(format!("node {id} failed to start: {e}"));
        }
        let d = self.rng.range(0, super::TICK_MS);
        self.at(d, super::Event::Tick(id));
        id
    }

    /// A node that learned it was removed stops for good, as the server exits.
    pub(super) fn retire_if_removed(&mut self, id: u64) {
        let n = &mut self.nodes[(id - 1) as usize];
        let removed = n.rep.as_ref().is_some_and(|r| r.core().is_removed());
        if removed && !n.retired {
            n.retired = true;
            n.crash(&mut self.rng);
            self.log(format!("RETIRE node {id}: told it was removed"));
        }
    }

    /// The configuration the end-of-run liveness check judges: the leader's.
    pub(super) fn members_of(&self, leader: u64) -> Vec<u64> {
        let Some(rep) = self.nodes[(leader - 1) as usize].rep.as_ref() else {
            return Vec::new();
        };
        crate::raft::members(rep.core().conf_state().1)
    }
}
