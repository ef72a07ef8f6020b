//! The peer handshake: the first frames on every peer connection, before any Raft message.
//! Sans-I/O: the state machines take frame payloads and return the frames to send; the server
//! moves the bytes (framed by `net::framing`, capped at [`MAX_FRAME`] until it succeeds) and
//! bounds the whole exchange with a timer.
//!
//! The dialer (the node that sends Raft messages on this connection) and the acceptor:
//! ```text
//! dialer -> acceptor  HELLO      cluster id (or 0: not known yet), dialer id, acceptor id, nonce_d
//! acceptor -> dialer  CHALLENGE  cluster id, acceptor id, dialer id, nonce_a, proof_a
//! dialer -> acceptor  PROOF      proof_d        (then Raft frames follow at once)
//! ```
//! `proof_x = HMAC-SHA256(secret, label_x | cluster id | dialer id | acceptor id | nonce_d |
//! nonce_a)` with distinct labels for the two roles, so each side proves it holds the secret
//! for exactly this cluster, these two ids and these two fresh nonces: a proof cannot be
//! replayed on another connection, reflected back, or reused to claim another id.
//!
//! Each message is a fixed layout (`"RKVP"`, version 1, kind, fields little endian); any other
//! length, magic, version or kind is `Malformed`.
//!
//! Cluster ids: both sides must name the same one. A side that does not know its cluster id
//! yet (a member that has not joined, see `server::identity`), or holds only a provisional one
//! (the bootstrapping member before its first handshake), takes the other side's, once the
//! other side's proof checked out; two sides that both know none are refused.

use super::peer_auth::{PeerSecrets, MAC_LEN};
use crate::storage::cluster_id::ClusterId;
use bytes::Bytes;
use std::fmt;

/// Largest handshake frame payload: a CHALLENGE (102 bytes), rounded up. Until the handshake
/// succeeds a peer connection buffers at most this (plus a frame header).
pub const MAX_FRAME: usize = 128;
/// Length of each side's nonce.
pub const NONCE_LEN: usize = 32;

const MAGIC: &[u8; 4] = b"RKVP";
const VERSION: u8 = 1;
const HELLO: u8 = 1;
const CHALLENGE: u8 = 2;
const PROOF: u8 = 3;
const PREFIX: usize = 6;
const HELLO_LEN: usize = PREFIX + 16 + 8 + 8 + NONCE_LEN;
const CHALLENGE_LEN: usize = HELLO_LEN + MAC_LEN;
const PROOF_LEN: usize = PREFIX + MAC_LEN;
// Every handshake message fits the cap the connection reads them under.
const _: () = assert!(CHALLENGE_LEN <= MAX_FRAME);
const LABEL_DIALER: &[u8] = b"raftkv peer handshake v1: dialer";
const LABEL_ACCEPTOR: &[u8] = b"raftkv peer handshake v1: acceptor";

/// Why a handshake failed. [`AuthError::reason`] is the `/metrics` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Not a handshake message of the expected kind and length.
    Malformed(&'static str),
    /// A frame header announced more than [`MAX_FRAME`] bytes.
    Oversized(usize),
    /// The other side belongs to another cluster.
    WrongCluster { ours: ClusterId, theirs: ClusterId },
    /// Neither side knows its cluster id yet.
    NoClusterId,
    /// The message is addressed to another node id.
    WrongReceiver { to: u64, me: u64 },
    /// The sender is not a member this node accepts, or not the one dialled.
    UnknownSender(u64),
    /// The proof does not check out with any of our secrets.
    BadProof,
    /// The handshake did not finish in time.
    Timeout,
    /// The TLS handshake under it failed (peer TLS: a certificate from another CA, no
    /// certificate, or not TLS at all).
    Tls(String),
}

impl AuthError {
    /// Every reason label, in a fixed order (the `/metrics` rows).
    pub const REASONS: [&'static str; 9] = [
        "malformed",
        "oversized",
        "wrong_cluster",
        "no_cluster_id",
        "wrong_receiver",
        "unknown_sender",
        "bad_proof",
        "timeout",
        "tls",
    ];

    /// The index of this error's label in [`AuthError::REASONS`].
    pub fn reason(&self) -> usize {
        match self {
            AuthError::Malformed(_) => 0,
            AuthError::Oversized(_) => 1,
            AuthError::WrongCluster { .. } => 2,
            AuthError::NoClusterId => 3,
            AuthError::WrongReceiver { .. } => 4,
            AuthError::UnknownSender(_) => 5,
            AuthError::BadProof => 6,
            AuthError::Timeout => 7,
            AuthError::Tls(_) => 8,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Malformed(what) => write!(f, "malformed handshake: {what}"),
            AuthError::Oversized(n) => {
                write!(f, "handshake frame of {n} bytes (at most {MAX_FRAME})")
            }
            AuthError::WrongCluster { ours, theirs } => {
                write!(f, "other side is of cluster {theirs}, this node of {ours}")
            }
            AuthError::NoClusterId => write!(
                f,
                "neither side knows the cluster id yet (the lowest member id creates it)"
            ),
            AuthError::WrongReceiver { to, me } => {
                write!(f, "handshake addressed to node {to}, this is node {me}")
            }
            AuthError::UnknownSender(id) => write!(f, "node id {id} is not accepted here"),
            AuthError::Tls(e) => write!(f, "{e}"),
            AuthError::BadProof => write!(
                f,
                "bad proof: the other side does not hold this cluster's peer secret \
                 (or one side runs --insecure-peers)"
            ),
            AuthError::Timeout => write!(f, "handshake timed out"),
        }
    }
}

impl std::error::Error for AuthError {}

/// What the two sides agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The other side's node id.
    pub peer: u64,
    pub cluster: ClusterId,
}

/// What this side knows of its cluster id when a handshake starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalCluster {
    /// Not known yet: take the other side's.
    Unknown,
    /// Made up by this member to bootstrap a cluster, not yet confirmed by any handshake:
    /// offered to members that have none, given up for the id of a member that has one (a
    /// bootstrapping member whose data directory was wiped rejoins its cluster).
    Provisional(ClusterId),
    /// Settled: only this cluster's members are accepted.
    Known(ClusterId),
}

impl LocalCluster {
    /// The id this side offers, if any.
    pub fn id(self) -> Option<ClusterId> {
        match self {
            LocalCluster::Unknown => None,
            LocalCluster::Provisional(c) | LocalCluster::Known(c) => Some(c),
        }
    }
}

impl From<Option<ClusterId>> for LocalCluster {
    fn from(c: Option<ClusterId>) -> LocalCluster {
        c.map_or(LocalCluster::Unknown, LocalCluster::Known)
    }
}

/// The fields of a HELLO or CHALLENGE.
struct Intro {
    cluster: Option<ClusterId>,
    from: u64,
    to: u64,
    nonce: [u8; NONCE_LEN],
}

fn encode_intro(kind: u8, i: &Intro, mac: Option<&[u8; MAC_LEN]>) -> Bytes {
    let mut b = Vec::with_capacity(CHALLENGE_LEN);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&[VERSION, kind]);
    b.extend_from_slice(&i.cluster.map_or([0; 16], ClusterId::to_bytes));
    b.extend_from_slice(&i.from.to_le_bytes());
    b.extend_from_slice(&i.to.to_le_bytes());
    b.extend_from_slice(&i.nonce);
    if let Some(m) = mac {
        b.extend_from_slice(m);
    }
    Bytes::from(b)
}

/// Checks magic, version, kind and exact length; returns the body after the prefix.
fn body(b: &[u8], kind: u8, len: usize) -> Result<&[u8], AuthError> {
    if b.len() < PREFIX || &b[0..4] != MAGIC {
        return Err(AuthError::Malformed("not a raftkv peer handshake"));
    }
    if b[4] != VERSION {
        return Err(AuthError::Malformed("unknown handshake version"));
    }
    if b[5] != kind || b.len() != len {
        return Err(AuthError::Malformed("unexpected message kind or length"));
    }
    Ok(&b[PREFIX..])
}

fn decode_intro(b: &[u8]) -> Intro {
    let mut cluster = [0u8; 16];
    cluster.copy_from_slice(&b[0..16]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&b[32..32 + NONCE_LEN]);
    let u = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    Intro {
        cluster: ClusterId::from_bytes(cluster),
        from: u(16),
        to: u(24),
        nonce,
    }
}

/// What is proved: the role, the agreed cluster, both ids and both nonces.
fn transcript(
    label: &[u8],
    cluster: ClusterId,
    dialer: u64,
    acceptor: u64,
    nonces: (&[u8; NONCE_LEN], &[u8; NONCE_LEN]),
) -> Vec<u8> {
    let mut t = Vec::with_capacity(label.len() + 32 + 2 * NONCE_LEN);
    t.extend_from_slice(label);
    t.extend_from_slice(&cluster.to_bytes());
    t.extend_from_slice(&dialer.to_le_bytes());
    t.extend_from_slice(&acceptor.to_le_bytes());
    t.extend_from_slice(nonces.0);
    t.extend_from_slice(nonces.1);
    t
}

/// The cluster both sides will use, or why there is none.
fn agree(ours: LocalCluster, theirs: Option<ClusterId>) -> Result<ClusterId, AuthError> {
    use LocalCluster::*;
    match (ours, theirs) {
        (Known(o), Some(t)) if o != t => Err(AuthError::WrongCluster { ours: o, theirs: t }),
        (Known(c) | Provisional(c), None) | (Known(c), _) => Ok(c),
        (Provisional(_) | Unknown, Some(t)) => Ok(t),
        (Unknown, None) => Err(AuthError::NoClusterId),
    }
}

/// The dialling side of one connection.
pub struct Dialer {
    me: u64,
    peer: u64,
    cluster: LocalCluster,
    nonce: [u8; NONCE_LEN],
}

impl Dialer {
    /// `nonce` must be fresh and unpredictable (`entropy::bytes`).
    pub fn new(me: u64, peer: u64, cluster: LocalCluster, nonce: [u8; NONCE_LEN]) -> Dialer {
        Dialer {
            me,
            peer,
            cluster,
            nonce,
        }
    }

    /// The first frame's payload.
    pub fn hello(&self) -> Bytes {
        let i = Intro {
            cluster: self.cluster.id(),
            from: self.me,
            to: self.peer,
            nonce: self.nonce,
        };
        encode_intro(HELLO, &i, None)
    }

    /// Checks the acceptor's CHALLENGE; returns our PROOF payload and what was agreed.
    pub fn on_challenge(
        &self,
        frame: &[u8],
        secrets: &PeerSecrets,
    ) -> Result<(Bytes, Agreed), AuthError> {
        let b = body(frame, CHALLENGE, CHALLENGE_LEN)?;
        let c = decode_intro(b);
        if c.to != self.me {
            return Err(AuthError::WrongReceiver {
                to: c.to,
                me: self.me,
            });
        }
        if c.from != self.peer {
            return Err(AuthError::UnknownSender(c.from));
        }
        let cluster = agree(self.cluster, c.cluster)?;
        let nonces = (&self.nonce, &c.nonce);
        let theirs = transcript(LABEL_ACCEPTOR, cluster, self.me, self.peer, nonces);
        if !secrets.verify(&theirs, &b[HELLO_LEN - PREFIX..]) {
            return Err(AuthError::BadProof);
        }
        let ours = transcript(LABEL_DIALER, cluster, self.me, self.peer, nonces);
        let mut p = Vec::with_capacity(PROOF_LEN);
        p.extend_from_slice(MAGIC);
        p.extend_from_slice(&[VERSION, PROOF]);
        p.extend_from_slice(&secrets.prove(&ours));
        let agreed = Agreed {
            peer: self.peer,
            cluster,
        };
        Ok((Bytes::from(p), agreed))
    }
}

/// The accepting side of one connection.
pub struct Acceptor {
    me: u64,
    cluster: LocalCluster,
    nonce: [u8; NONCE_LEN],
    /// After the HELLO: the dialer, the agreed cluster and the dialer's nonce.
    hello: Option<(u64, ClusterId, [u8; NONCE_LEN])>,
}

/// What the acceptor does next.
#[derive(Debug, PartialEq, Eq)]
pub enum AcceptStep {
    /// Send this CHALLENGE payload and wait for the PROOF.
    Reply(Bytes),
    /// The dialer proved who it is: Raft frames from it may follow.
    Done(Agreed),
}

impl Acceptor {
    /// `nonce` must be fresh and unpredictable (`entropy::bytes`).
    pub fn new(me: u64, cluster: LocalCluster, nonce: [u8; NONCE_LEN]) -> Acceptor {
        Acceptor {
            me,
            cluster,
            nonce,
            hello: None,
        }
    }

    /// Takes the next handshake frame. `accepts(id)` says whether `id` may speak Raft to
    /// this node (the server's one membership check).
    pub fn on_frame(
        &mut self,
        frame: &[u8],
        secrets: &PeerSecrets,
        accepts: impl Fn(u64) -> bool,
    ) -> Result<AcceptStep, AuthError> {
        let Some((dialer, cluster, nonce_d)) = self.hello else {
            return self.on_hello(frame, secrets, accepts);
        };
        let b = body(frame, PROOF, PROOF_LEN)?;
        let t = transcript(
            LABEL_DIALER,
            cluster,
            dialer,
            self.me,
            (&nonce_d, &self.nonce),
        );
        if !secrets.verify(&t, b) {
            return Err(AuthError::BadProof);
        }
        Ok(AcceptStep::Done(Agreed {
            peer: dialer,
            cluster,
        }))
    }

    fn on_hello(
        &mut self,
        frame: &[u8],
        secrets: &PeerSecrets,
        accepts: impl Fn(u64) -> bool,
    ) -> Result<AcceptStep, AuthError> {
        let h = decode_intro(body(frame, HELLO, HELLO_LEN)?);
        if h.to != self.me {
            return Err(AuthError::WrongReceiver {
                to: h.to,
                me: self.me,
            });
        }
        if h.from == self.me || !accepts(h.from) {
            return Err(AuthError::UnknownSender(h.from));
        }
        let cluster = agree(self.cluster, h.cluster)?;
        let nonces = (&h.nonce, &self.nonce);
        let proof = secrets.prove(&transcript(
            LABEL_ACCEPTOR,
            cluster,
            h.from,
            self.me,
            nonces,
        ));
        self.hello = Some((h.from, cluster, h.nonce));
        let c = Intro {
            cluster: Some(cluster),
            from: self.me,
            to: h.from,
            nonce: self.nonce,
        };
        Ok(AcceptStep::Reply(encode_intro(CHALLENGE, &c, Some(&proof))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(hex: &str) -> PeerSecrets {
        PeerSecrets::parse(hex, "test").unwrap()
    }
    const S: &str = "00112233445566778899aabbccddeeff";
    const OTHER: &str = "ffeeddccbbaa99887766554433221100";

    fn cid(v: u8) -> Option<ClusterId> {
        ClusterId::from_bytes([v; 16])
    }

    /// Runs a whole handshake: (dialer's result, acceptor's result).
    fn run(
        d: (&PeerSecrets, Option<ClusterId>, u64, u64),
        a: (&PeerSecrets, Option<ClusterId>, u64),
    ) -> Result<(Agreed, Agreed), AuthError> {
        let dialer = Dialer::new(d.2, d.3, d.1.into(), [1; NONCE_LEN]);
        let mut acc = Acceptor::new(a.2, a.1.into(), [2; NONCE_LEN]);
        let members = |id: u64| (1..=3).contains(&id);
        let AcceptStep::Reply(ch) = acc.on_frame(&dialer.hello(), a.0, members)? else {
            panic!("acceptor done after HELLO");
        };
        let (proof, d_agreed) = dialer.on_challenge(&ch, d.0)?;
        match acc.on_frame(&proof, a.0, members)? {
            AcceptStep::Done(a_agreed) => Ok((d_agreed, a_agreed)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn both_sides_agree_and_a_newcomer_takes_the_cluster_id() {
        let s = secrets(S);
        let (d, a) = run((&s, cid(7), 1, 2), (&s, cid(7), 2)).unwrap();
        assert_eq!(
            d,
            Agreed {
                peer: 2,
                cluster: cid(7).unwrap()
            }
        );
        assert_eq!(
            a,
            Agreed {
                peer: 1,
                cluster: cid(7).unwrap()
            }
        );
        // Either side may not know it yet; both not knowing is refused.
        assert_eq!(
            run((&s, None, 1, 2), (&s, cid(7), 2)).unwrap().0.cluster,
            cid(7).unwrap()
        );
        assert_eq!(
            run((&s, cid(7), 1, 2), (&s, None, 2)).unwrap().1.cluster,
            cid(7).unwrap()
        );
        assert_eq!(
            run((&s, None, 1, 2), (&s, None, 2)),
            Err(AuthError::NoClusterId)
        );
        let ins = PeerSecrets::insecure();
        assert!(run((&ins, cid(7), 1, 2), (&ins, cid(7), 2)).is_ok());
    }

    #[test]
    fn a_provisional_id_is_offered_to_newcomers_and_given_up_for_a_known_one() {
        let s = secrets(S);
        let prov = LocalCluster::Provisional(cid(5).unwrap());
        let handshake = |d: LocalCluster, a: LocalCluster| {
            let dialer = Dialer::new(1, 2, d, [1; NONCE_LEN]);
            let mut acc = Acceptor::new(2, a, [2; NONCE_LEN]);
            let AcceptStep::Reply(ch) = acc.on_frame(&dialer.hello(), &s, |_| true)? else {
                panic!("acceptor done after HELLO");
            };
            let (proof, agreed) = dialer.on_challenge(&ch, &s)?;
            acc.on_frame(&proof, &s, |_| true)?;
            Ok::<_, AuthError>(agreed.cluster)
        };
        // The bootstrapping member's id goes to members that have none...
        assert_eq!(handshake(prov, LocalCluster::Unknown), Ok(cid(5).unwrap()));
        assert_eq!(handshake(LocalCluster::Unknown, prov), Ok(cid(5).unwrap()));
        // ...and a member that has one keeps it: the provisional side takes it.
        let known = LocalCluster::Known(cid(7).unwrap());
        assert_eq!(handshake(known, prov), Ok(cid(7).unwrap()));
        // (The known side cannot tell a provisional id from a foreign one, so it refuses
        // when dialled; the provisional side learns when the known side dials it.)
        let wrong = AuthError::WrongCluster {
            ours: cid(7).unwrap(),
            theirs: cid(5).unwrap(),
        };
        assert_eq!(handshake(prov, known), Err(wrong));
    }

    #[test]
    fn every_mismatch_is_refused_with_its_reason() {
        let (s, o, ins) = (secrets(S), secrets(OTHER), PeerSecrets::insecure());
        let wrong = AuthError::WrongCluster {
            ours: cid(7).unwrap(),
            theirs: cid(8).unwrap(),
        };
        assert_eq!(run((&s, cid(8), 1, 2), (&s, cid(7), 2)), Err(wrong));
        // The acceptor refuses a dialer with another secret; a dialer without the secret learns
        // nothing it could use elsewhere, and refuses an acceptor without it.
        assert_eq!(
            run((&o, cid(7), 1, 2), (&s, cid(7), 2)),
            Err(AuthError::BadProof)
        );
        assert_eq!(
            run((&s, cid(7), 1, 2), (&o, cid(7), 2)),
            Err(AuthError::BadProof)
        );
        assert_eq!(
            run((&ins, cid(7), 1, 2), (&s, cid(7), 2)),
            Err(AuthError::BadProof)
        );
        assert_eq!(
            run((&s, cid(7), 1, 3), (&s, cid(7), 2)),
            Err(AuthError::WrongReceiver { to: 3, me: 2 })
        );
        assert_eq!(
            run((&s, cid(7), 9, 2), (&s, cid(7), 2)),
            Err(AuthError::UnknownSender(9))
        );
        assert_eq!(
            run((&s, cid(7), 2, 2), (&s, cid(7), 2)),
            Err(AuthError::UnknownSender(2))
        );
    }

    #[test]
    fn proofs_are_bound_to_roles_ids_and_nonces() {
        let s = secrets(S);
        let members = |_| true;
        // A CHALLENGE's proof sent back as a PROOF (reflection) fails.
        let d = Dialer::new(1, 2, cid(7).into(), [1; NONCE_LEN]);
        let mut a = Acceptor::new(2, cid(7).into(), [2; NONCE_LEN]);
        let AcceptStep::Reply(ch) = a.on_frame(&d.hello(), &s, members).unwrap() else {
            panic!()
        };
        let mut reflected = b"RKVP\x01\x03".to_vec();
        reflected.extend_from_slice(&ch[HELLO_LEN..]);
        assert_eq!(
            a.on_frame(&reflected, &s, members),
            Err(AuthError::BadProof)
        );
        // A PROOF replayed on a connection with another acceptor nonce fails.
        let (proof, _) = d.on_challenge(&ch, &s).unwrap();
        let mut a2 = Acceptor::new(2, cid(7).into(), [3; NONCE_LEN]);
        a2.on_frame(&d.hello(), &s, members).unwrap();
        assert_eq!(a2.on_frame(&proof, &s, members), Err(AuthError::BadProof));
        // A CHALLENGE from the right acceptor for another dialer nonce fails.
        let d2 = Dialer::new(1, 2, cid(7).into(), [9; NONCE_LEN]);
        assert_eq!(d2.on_challenge(&ch, &s).err(), Some(AuthError::BadProof));
    }

    #[test]
    fn malformed_messages_are_refused() {
        let s = secrets(S);
        let hello = Dialer::new(1, 2, cid(7).into(), [1; NONCE_LEN]).hello();
        assert_eq!(hello.len(), HELLO_LEN);
        let mut bad_cases: Vec<Vec<u8>> = vec![vec![], b"GET / HTTP/1.1".to_vec()];
        bad_cases.push(hello[..HELLO_LEN - 1].to_vec());
        let mut v = hello.to_vec();
        v[4] = 2;
        bad_cases.push(v);
        let mut k = hello.to_vec();
        k[5] = PROOF;
        bad_cases.push(k);
        for b in bad_cases {
            let mut a = Acceptor::new(2, cid(7).into(), [2; NONCE_LEN]);
            let r = a.on_frame(&b, &s, |_| true);
            assert!(matches!(r, Err(AuthError::Malformed(_))), "{b:?}: {r:?}");
        }
    }
}
