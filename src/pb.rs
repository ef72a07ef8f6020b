//! Protobuf types generated from `proto/` by `build.rs`.

/// Peer messages and the log entry format (`proto/raft.proto`).
#[allow(clippy::all, missing_docs)]
pub mod raftpb {
    include!(concat!(env!("OUT_DIR"), "/raftpb.rs"));
}

/// Client API and replicated commands (`proto/kv.proto`).
#[allow(clippy::all, missing_docs)]
pub mod kvpb {
    include!(concat!(env!("OUT_DIR"), "/kvpb.rs"));
}
