#!/bin/sh
# `make bench-api`: create-to-Running latency of a one-container group through `eci serve` vs the
# same pod straight through CRI, release binaries, p50 over BENCH_RUNS (20) runs after a warm-up;
# ends with `ratio: X.XX`. Needs root, containerd and the CNI plugins (scripts/install-deps.sh).
set -eu
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
# The test binary finds eci, the shim and the agent next to itself (target/release).
$CARGO build --release --locked -p eci -p containerd-shim-eci-v2 -p eci-agent
$CARGO test --release --locked -p eci-tests --test eci_bench -- --ignored --nocapture --test-threads 1
