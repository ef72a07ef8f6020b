#!/usr/bin/env bash
# Shows that the test suite sees a node that does not make its log durable before it
# acknowledges: each mutation below is applied to a copy of the committed tree (never to your
# work tree), `cargo test --release --test sim` is run against it, and the script fails if a
# mutant PASSES the simulator tests.
#
#   tools/mutation-check.sh            # both mutations (first run builds into target/mutation)
#
# Mutations (both in the node layer's Ready phases, src/node/ready.rs, which the server and the
# simulator share):
#   no-sync          the sync call is deleted: nothing the Ready appended is ever made durable
#   ack-before-sync  the messages that must wait for the sync (append acks, vote grants) leave
#                    before it
# The simulator's disk loses unsynced writes on a crash, so both break durability of committed
# entries within the first seeds. (The same ack-before-sync behaviour is also a planted bug,
# `--bug ack-before-sync`, tested in tests/sim_node_bugs.rs.)
set -euo pipefail
repo=$(git rev-parse --show-toplevel)
target="$repo/target/mutation"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
file=src/node/ready.rs

mutate() { # name, perl substitution
    local name=$1 expr=$2 dir="$tmp/$1"
    mkdir -p "$dir"
    git -C "$repo" archive HEAD | tar -x -C "$dir"
    cp "$dir/$file" "$dir/$file.orig"
    perl -0pi -e "$expr" "$dir/$file"
    if cmp -s "$dir/$file" "$dir/$file.orig"; then
        echo "mutation $name did not apply (src/node/ready.rs changed?)" >&2
        exit 2
    fi
    echo "== mutation $name"
    if (cd "$dir" && RUST_BACKTRACE=0 CARGO_TARGET_DIR="$target" cargo test --release --test sim \
        three_node_clusters_survive_faults 2>&1 | tail -n 15); then
        echo "mutation $name SURVIVED: the suite did not notice" >&2
        return 1
    fi
    echo "mutation $name killed (the simulator tests failed, as they must)"
}

status=0
mutate no-sync 's/if must_sync && shell\.sync\(\)\? == SyncStatus::Pending \{/if false {/' || status=1
mutate ack-before-sync \
    's/let \(early, mut late\) = rd\.take_messages\(\);/let (mut early, mut late) = rd.take_messages();\n    early.append(&mut late);/' \
    || status=1
exit $status
