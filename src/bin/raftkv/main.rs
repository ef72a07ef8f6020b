//! The `raftkv` binary: run a node (`serve`), a local cluster (`cluster`), or talk to a
//! cluster (`put`, `get`, `del`, `cas`, `scan`, `status`, `snapshot save|restore`, `member`,
//! `leader`). This file only dispatches:
//! `args` defines the command line, `serve` runs a node, `cluster` supervises a local
//! cluster, `commands` holds the client commands, `backup` the snapshot save / restore
//! commands and `output` what they print.
//!
//! Exit codes of the client commands (stable, for scripts):
//! - 0: success
//! - 1: key not found (get, del), CAS failed (cas)
//! - 2: usage error (bad flags or arguments)
//! - 3: cluster unavailable: timeout, no leader, connection refused, outcome uncertain
//! - 4: request rejected by the server (bad request, too large, internal error)

mod args;
mod backup;
mod cluster;
mod commands;
mod escape;
mod join;
mod members;
mod output;
mod serve;

use args::{Cli, Cmd, TlsCmd};
use clap::Parser;
use output::{EXIT_OK, EXIT_USAGE};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    match cli.cmd {
        Cmd::Serve(a) => serve::serve(a),
        Cmd::Cluster(a) => cluster::cluster(a),
        Cmd::Snapshot(s) => {
            let _ = raftkv::logger::init(Some("warn"));
            ExitCode::from(backup::run(s))
        }
        Cmd::Tls(TlsCmd::Init { dir, nodes, names }) => {
            match raftkv::net::certgen::init(&dir, nodes, &names) {
                Ok(g) => {
                    for f in &g.created {
                        println!("wrote {}", f.display());
                    }
                    if g.created.is_empty() {
                        println!(
                            "{} already holds every file: nothing written",
                            dir.display()
                        );
                    }
                    println!("CA for clients: --tls-ca {}", g.ca.display());
                    ExitCode::from(EXIT_OK)
                }
                Err(e) => {
                    eprintln!("raftkv tls init: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::NewPeerSecret { file } => match raftkv::net::peer_auth::PeerSecrets::generate(&file) {
            Ok(_) => {
                println!("wrote a new peer secret to {}", file.display());
                ExitCode::from(EXIT_OK)
            }
            Err(e) => {
                eprintln!("raftkv new-peer-secret: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::NewClientToken { file } => {
            match raftkv::net::client_auth::ClientToken::generate(&file) {
                Ok(_) => {
                    println!("wrote a new client token to {}", file.display());
                    ExitCode::from(EXIT_OK)
                }
                Err(e) => {
                    eprintln!("raftkv new-client-token: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        cmd => {
            // A client command piped into `head` should end quietly, as Unix tools do, not panic
            // on EPIPE: restore the default SIGPIPE action (Rust's runtime ignores it). The
            // server keeps ignoring it and handles EPIPE per connection.
            // SAFETY: signal(2) with SIG_DFL, before any other thread exists.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            let _ = raftkv::logger::init(Some("warn"));
            ExitCode::from(commands::run(cmd))
        }
    }
}
