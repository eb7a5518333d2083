#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets in fuzz/ (cargo-fuzz, libFuzzer), one at a time.
#
#   scripts/fuzz.sh                       every target, 60 s each
#   scripts/fuzz.sh envelope_json 600     one target, 10 minutes
#   FUZZ_RUNS=10000000 scripts/fuzz.sh all 86400
#                                         every target until 10 million executions (or the time)
#
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz with it
# when missing. Each target starts from its checked-in seeds (fuzz/corpus/<target>/, read only)
# and keeps what it finds in fuzz/work/<target>/ (not checked in). A crash stops the target and
# is written to fuzz/artifacts/<target>/; once fixed, it goes to fuzz/regressions/<target>/, which
# tests/fuzz_corpus.rs runs on stable in the normal test run. Prints, per target, libFuzzer's
# final count of executions and the crashes found. Exits non-zero if any target crashed.
# CARGO_TARGET_DIR is honoured (default: fuzz/target).
#
# FUZZ_SANITIZER=address (or memory, thread, leak) builds with that sanitizer; the default is none:
# the core and the checks are safe Rust (`#![forbid(unsafe_code)]`), what is fuzzed for is panics
# and broken invariants, and AddressSanitizer made these targets about six times slower
# (SECURITY.md, "Fuzzing").
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz="$root/fuzz"
which="${1:-all}"
seconds="${2:-60}"
runs="${FUZZ_RUNS:-0}" # 0: no limit but the time
sanitizer="${FUZZ_SANITIZER:-none}"
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$cargo_bin:$PATH"

die() {
	echo "fuzz: $*" >&2
	exit 1
}

[[ "$seconds" =~ ^[0-9]+$ ]] || die "seconds must be a whole number, not '$seconds'"
[[ "$runs" =~ ^[0-9]+$ ]] || die "FUZZ_RUNS must be a whole number, not '$runs'"
rustup toolchain list | grep -q '^nightly' ||
	die "cargo-fuzz needs the nightly toolchain: rustup toolchain install nightly"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
	echo "fuzz: installing cargo-fuzz" >&2
	cargo +nightly install cargo-fuzz --locked
fi

cd "$fuzz"
mapfile -t all < <(cargo +nightly fuzz list)
if [[ "$which" == all ]]; then
	targets=("${all[@]}")
else
	printf '%s\n' "${all[@]}" | grep -qx "$which" || die "no target '$which' (${all[*]})"
	targets=("$which")
fi

# -a: debug assertions (and overflow checks) on, as in the tests. The same flags for build and
# run, or the run builds again.
flags=(-a -s "$sanitizer")
if [[ "$which" == all ]]; then
	cargo +nightly fuzz build "${flags[@]}" >&2
else
	cargo +nightly fuzz build "${flags[@]}" "$which" >&2
fi

status=0
summary=()
for target in "${targets[@]}"; do
	work="$fuzz/work/$target"
	mkdir -p "$work" "$fuzz/artifacts/$target"
	log="$work/last-run.log"
	args=(-max_total_time="$seconds" -print_final_stats=1)
	((runs > 0)) && args+=(-runs="$runs")
	[[ -f "$fuzz/dict/$target.dict" ]] && args+=(-dict="$fuzz/dict/$target.dict")
	before=$(find "$fuzz/artifacts/$target" -type f | wc -l)
	limit=""
	((runs > 0)) && limit=" (or $runs executions)"
	echo "fuzz: $target for ${seconds}s$limit; log in $log" >&2
	started=$(date +%s)
	# The work folder first: libFuzzer adds what it finds to the first folder only.
	if cargo +nightly fuzz run "${flags[@]}" "$target" "$work" "$fuzz/corpus/$target" -- "${args[@]}" >"$log" 2>&1; then
		:
	else
		status=1
	fi
	elapsed=$(($(date +%s) - started))
	after=$(find "$fuzz/artifacts/$target" -type f | wc -l)
	executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	crashes=$((after - before))
	summary+=("$(printf '%-16s %14s executions %6ss %3s crashes' "$target" "${executions:-?}" "$elapsed" "$crashes")")
	if ((crashes > 0)); then
		status=1
		find "$fuzz/artifacts/$target" -type f -newer "$log" -print | sed 's/^/    crash: /' >&2 || true
	fi
done
printf '%s\n' "${summary[@]}"
exit "$status"
