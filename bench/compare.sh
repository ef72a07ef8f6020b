#!/usr/bin/env bash
# Builds raftkv and raftkv-bench in release mode and runs the local comparison against etcd and
# Redis (installed with apt-get if missing). Extra arguments go to `raftkv-bench compare`, e.g.
#   bench/compare.sh --duration 5 --clients 1,16,64 --out-dir /tmp/cmp
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin raftkv --bin raftkv-bench
exec target/release/raftkv-bench compare "$@"
