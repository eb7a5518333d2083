#!/usr/bin/env bash
# Builds the Cloudflare Worker (worker/) into worker/build/ with worker-build, without touching
# the network.
#
# This is the one definition of the Worker build: wrangler.toml's [build] command runs it, so
# `wrangler dev` and `wrangler deploy` build exactly what a manual run builds.
#
#   scripts/build-worker.sh            release build (what wrangler runs)
#   scripts/build-worker.sh --dev      any arguments go to worker-build, and force a build
#
# worker-build would download wasm-bindgen, wasm-opt and esbuild; each *_BIN variable below
# points it at a local copy instead (scripts/setup-worker.sh installs them). Set any of them
# yourself to override.
#
# The rules come from relay.toml at the repository's root, parsed and validated by
# worker/build.rs; GSIO_RELAY_CONFIG=path (the native relay's own variable; relative to the
# current directory) builds the Worker with another file instead. GSIO_WORKER_OUT=dir writes the
# build somewhere other than worker/build (the tests build Workers of their own there).
#
# Without arguments the build is skipped when the last release build into the same place, with
# the same relay.toml, started after every input last changed (worker/src, worker/build.rs,
# worker/Cargo.toml, relay-core/, the relay.toml in use, the workspace Cargo.toml, Cargo.lock and
# this script, whose profile settings shape the wasm), so that each `wrangler dev` start does not
# spend seconds on cargo, wasm-bindgen and wasm-opt for nothing. GSIO_WORKER_FORCE_BUILD=1 builds
# anyway. A new path dependency of the worker crate must be added to `inputs` below.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
worker="$root/worker"
out="${GSIO_WORKER_OUT:-$worker/build}"
[[ "$out" == /* ]] || out="$PWD/$out"
config="${GSIO_RELAY_CONFIG:-$root/relay.toml}"
[[ "$config" == /* ]] || config="$PWD/$config"
# build.rs reads the file named here (cargo reruns it when the name or the file changes).
export GSIO_RELAY_CONFIG="$config"
node_bin="$worker/node_modules/.bin"
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$cargo_bin:$PATH"

die() {
	echo "build-worker: $*" >&2
	exit 1
}

inputs=("$worker/src" "$worker/build.rs" "$worker/Cargo.toml" "$root/relay-core" "$config" "$root/Cargo.toml" "$root/Cargo.lock" "${BASH_SOURCE[0]}")
# Written when a release build succeeds, holding the relay.toml it was built with; its mtime is
# when that build started, so an input saved during the build still counts as newer.
stamp="$out/.release-build"

up_to_date() {
	[[ -f "$stamp" && -f "$out/index.js" && -f "$out/index_bg.wasm" ]] || return 1
	[[ "$(cat "$stamp")" == "$config" ]] || return 1
	local input
	for input in "${inputs[@]}"; do
		[[ -e "$input" ]] || continue
		if [[ -n "$(find "$input" -newer "$stamp" -print -quit)" ]]; then
			return 1
		fi
	done
}

if [[ $# -eq 0 && "${GSIO_WORKER_FORCE_BUILD:-0}" != 1 ]] && up_to_date; then
	echo "build-worker: worker/build is up to date (GSIO_WORKER_FORCE_BUILD=1 to rebuild)"
	exit 0
fi

# The wasm-bindgen CLI must be the very version of the wasm-bindgen crate in Cargo.lock: their
# interface schema must match, and a mismatch fails late with a cryptic message. No version to
# compare with is an error too, never a check skipped.
[[ -r "$root/Cargo.lock" ]] || die "cannot read $root/Cargo.lock, which pins the wasm-bindgen version the CLI must match"
locked_bindgen="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$root/Cargo.lock")"
[[ "$locked_bindgen" =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] ||
	die "no wasm-bindgen version in $root/Cargo.lock (found: '${locked_bindgen}'); the worker crate depends on wasm-bindgen, so Cargo.lock must list it"

export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$(command -v wasm-bindgen || true)}"
export WASM_OPT_BIN="${WASM_OPT_BIN:-$node_bin/wasm-opt}"
export ESBUILD_BIN="${ESBUILD_BIN:-$node_bin/esbuild}"

command -v worker-build >/dev/null || die "worker-build not found; run scripts/setup-worker.sh"
[[ -x "$WASM_BINDGEN_BIN" ]] || die "wasm-bindgen not found${WASM_BINDGEN_BIN:+ at $WASM_BINDGEN_BIN}; run scripts/setup-worker.sh"
[[ -x "$WASM_OPT_BIN" ]] || die "wasm-opt not found at $WASM_OPT_BIN; run scripts/setup-worker.sh"
[[ -x "$ESBUILD_BIN" ]] || die "esbuild not found at $ESBUILD_BIN; run scripts/setup-worker.sh"
have_bindgen="$("$WASM_BINDGEN_BIN" --version | awk '{ print $2 }')" ||
	die "$WASM_BINDGEN_BIN --version failed; run scripts/setup-worker.sh"
[[ "$have_bindgen" == "$locked_bindgen" ]] ||
	die "wasm-bindgen CLI is '$have_bindgen' but Cargo.lock has $locked_bindgen; run scripts/setup-worker.sh"

# The Worker's release profile, here rather than in Cargo.toml's [profile.release] (which the
# native relay shares, and would make slower): the bundle is uploaded and instantiated on every
# cold start, so size comes first. One codegen unit and fat LTO let the linker drop what the
# Worker never calls; "z" optimizes for size. Measured in BENCHMARKS.md ("Worker (wrangler dev)").
export CARGO_PROFILE_RELEASE_OPT_LEVEL="${CARGO_PROFILE_RELEASE_OPT_LEVEL:-z}"
export CARGO_PROFILE_RELEASE_LTO="${CARGO_PROFILE_RELEASE_LTO:-fat}"
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS="${CARGO_PROFILE_RELEASE_CODEGEN_UNITS:-1}"
# worker-build keeps the wasm's name section (function names, for stack traces): about a quarter
# of the bundle. Stripped here: a panic still logs its message and source location (the panic
# hook prints them), only the wasm frames of a JS stack trace lose their names.
# CARGO_PROFILE_RELEASE_STRIP=none keeps them, for debugging a deployed Worker.
export CARGO_PROFILE_RELEASE_STRIP="${CARGO_PROFILE_RELEASE_STRIP:-symbols}"

args=("$@")
[[ ${#args[@]} -gt 0 ]] || args=(--release)

mkdir -p "$out"
rm -f "$stamp"
started="$(mktemp "$out/.build-started.XXXXXX")"
trap 'rm -f "$started"' EXIT

cd "$worker"
echo "build-worker: worker-build ${args[*]} with $config into $out (wasm-bindgen $WASM_BINDGEN_BIN, wasm-opt $WASM_OPT_BIN, esbuild $ESBUILD_BIN)"
worker-build --out-dir "$out" "${args[@]}"

if [[ "${args[*]}" == --release ]]; then
	printf '%s' "$config" >"$started"
	mv "$started" "$stamp"
fi
