//! Compiles `proto/*.proto` with the pure-Rust `protox` compiler, so a fresh machine needs no
//! system `protoc`. With the `etcd` feature it also generates the gRPC client stubs of the etcd
//! subset the bench tool uses (bench/proto/etcd_rpc.proto), the same way.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/raft.proto", "proto/kv.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let mut config = prost_build::Config::new();
    // Payloads are `bytes::Bytes`: cloning an entry to send it to several peers is a refcount bump.
    config.bytes(["."]);
    config.compile_fds(fds)?;

    #[cfg(feature = "etcd")]
    {
        let etcd = "bench/proto/etcd_rpc.proto";
        println!("cargo:rerun-if-changed={etcd}");
        let fds = protox::compile([etcd], ["bench/proto"])?;
        tonic_prost_build::configure()
            .build_server(false)
            .compile_fds(fds)?;
    }
    Ok(())
}
