#!/usr/bin/env bash
# Installs what building and running the Cloudflare Worker (worker/) needs, and nothing that is
# already there at the right version: the wasm32 target, worker-build, the wasm-bindgen CLI that
# matches Cargo.lock, and worker/node_modules (wrangler, workerd, esbuild, binaryen's wasm-opt)
# from worker/package-lock.json. Also the one other tool the tests drive: Debian's chromium (the
# admin console's browser test, tests/console.rs). Safe to run again; every step says what it
# does or skips.
#
# Needs rustup, cargo, node and npm, and reaches only crates.io, the npm registry and (for
# chromium, when it is missing) Debian's package archive through apt-get.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$cargo_bin:$PATH"

# worker-build's minor version must match the worker crate's (0.8.x here), and its patch
# release is pinned for reproducible output.
worker_build_version=0.8.7

say() {
	echo "setup-worker: $*"
}

# Installs one crate's binaries at an exact version. `--locked` first: the tool's own lockfile is
# what its authors tested. That lockfile can pin a dependency version the registry no longer
# serves (yanked or never mirrored), and then cargo refuses at once; the same exact version of
# the tool is then built against the newest compatible dependencies instead.
install_exact() {
	local crate="$1" version="$2"
	if cargo install --locked "$crate" --version "$version"; then
		return 0
	fi
	say "$crate $version: its lockfile cannot be satisfied from the registry; resolving its dependencies afresh"
	cargo install "$crate" --version "$version"
}

# The version of a CLI, or nothing when it is not installed.
cli_version() {
	command -v "$1" >/dev/null || return 0
	"$1" --version 2>/dev/null | awk '{ print $NF }'
}

# The wasm-bindgen crate in Cargo.lock; failing that (no lockfile yet), the exact pin in
# worker/Cargo.toml.
locked_bindgen() {
	local version=""
	if [[ -f "$root/Cargo.lock" ]]; then
		version="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$root/Cargo.lock")"
	fi
	if [[ -z "$version" ]]; then
		version="$(sed -n 's/^wasm-bindgen = "=\(.*\)"$/\1/p' "$root/worker/Cargo.toml")"
	fi
	[[ -n "$version" ]] || {
		echo "setup-worker: no wasm-bindgen version in Cargo.lock or worker/Cargo.toml" >&2
		exit 1
	}
	echo "$version"
}

if rustup target list --installed | grep -qx wasm32-unknown-unknown; then
	say "rust target wasm32-unknown-unknown: present"
else
	say "rust target wasm32-unknown-unknown: adding"
	rustup target add wasm32-unknown-unknown
fi

have="$(cli_version worker-build)"
if [[ "$have" == "$worker_build_version" ]]; then
	say "worker-build $have: present"
else
	say "worker-build: installing $worker_build_version (found: ${have:-none})"
	install_exact worker-build "$worker_build_version"
fi

want="$(locked_bindgen)"
have="$(cli_version wasm-bindgen)"
if [[ "$have" == "$want" ]]; then
	say "wasm-bindgen-cli $have: present"
else
	say "wasm-bindgen-cli: installing $want (found: ${have:-none})"
	install_exact wasm-bindgen-cli "$want"
fi

if command -v chromium >/dev/null; then
	say "chromium: present"
elif command -v apt-get >/dev/null; then
	say "chromium: installing with apt-get (the console's browser test drives it headless)"
	if [[ "$(id -u)" -eq 0 ]]; then
		apt_get=(apt-get)
	elif command -v sudo >/dev/null; then
		apt_get=(sudo apt-get)
	else
		echo "setup-worker: chromium is missing and installing it needs root (apt-get install -y chromium)" >&2
		exit 1
	fi
	"${apt_get[@]}" update
	DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y --no-install-recommends chromium
else
	echo "setup-worker: chromium is missing and there is no apt-get to install it; install Chromium (a \`chromium\` on PATH) for tests/console.rs" >&2
	exit 1
fi

# npm ci writes node_modules/.package-lock.json; older than package-lock.json means stale.
cd "$root/worker"
if [[ -f node_modules/.package-lock.json && ! package-lock.json -nt node_modules/.package-lock.json ]]; then
	say "worker/node_modules: up to date with package-lock.json"
else
	say "worker/node_modules: npm ci"
	npm ci --no-audit --no-fund
fi

say "done"
