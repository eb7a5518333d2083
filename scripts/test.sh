#!/usr/bin/env bash
# Runs every test of gsio-relay, installing first what is missing (see scripts/setup-worker.sh):
# the native relay and the routing core (unit and integration tests against real servers on
# 127.0.0.1), the core's wasm32 build, and the Cloudflare Worker in real workerd (wrangler dev,
# started and stopped by the tests themselves) plus an offline dry-run deploy.
#
# Needs only the Rust toolchain (rustup) and Node.js with npm. This is the README's test command,
# and .ci/run runs exactly this.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# Keep wrangler offline and quiet: no metrics, no Cloudflare lookups.
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false

step() { printf '\n== %s\n' "$*"; }

step "install what is missing"
bash scripts/setup-worker.sh

step "formatting"
cargo fmt --all -- --check

step "the routing core builds for wasm32-unknown-unknown (no tokio, no I/O)"
cargo check -p gsio-relay-core --target wasm32-unknown-unknown

step "build the Worker"
bash scripts/build-worker.sh

step "the Worker's deploy bundle (offline dry run)"
dist="$root/target/worker-dry-run"
node worker/node_modules/wrangler/bin/wrangler.js deploy --dry-run --outdir "$dist" 2>&1 |
	grep -E "Total Upload|RELAY_ROOM" || true

step "tests: core, native relay, Worker in workerd"
cargo test --workspace --exclude gsio-relay-worker --all-targets --no-fail-fast
