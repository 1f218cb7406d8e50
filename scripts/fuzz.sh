#!/usr/bin/env bash
# Fuzzes the message, event, auth, query and frame parsers (cargo-fuzz /
# libFuzzer; docs/fuzzing.md): builds every target in fuzz/, runs each for N
# seconds starting from its committed seeds (fuzz/seeds/<target>/), prints
# per-target exec counts, and fails if any target crashed (a panic is a bug).
#
# Usage: scripts/fuzz.sh [seconds_per_target] [target...]   (default 20 s, all)
# Env:   DANMAKU_FUZZ_TARGET_DIR (default ~/.cache/danmaku-fuzz-target)
#        DANMAKU_FUZZ_CORPUS (default fuzz/corpus, git-ignored): where each
#        target's corpus grows across runs
#
# Stable Rust is enough: RUSTC_BOOTSTRAP=1 lets it accept the -Z flags
# cargo-fuzz passes. No sanitizer (-s none): the code is safe Rust, and
# libFuzzer still catches panics (overflow checks and debug assertions on).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
shift || true
export PATH="$HOME/.cargo/bin:$PATH"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${DANMAKU_FUZZ_TARGET_DIR:-$HOME/.cache/danmaku-fuzz-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
corpus_root="${DANMAKU_FUZZ_CORPUS:-fuzz/corpus}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz into ~/.cargo/bin"
  cargo install cargo-fuzz --locked --version '^0.13'
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

# One build for every target; the runs below use its binaries as they are
# (no rebuild mid-run if the sources change meanwhile).
cargo fuzz build -s none
bin_dir="$CARGO_TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release"

logs="$(mktemp -d /tmp/danmaku-fuzz.XXXXXX)"
trap 'rm -rf "$logs"' EXIT
failed=()
summary=()
for t in "${targets[@]}"; do
  corpus="$corpus_root/$t"
  mkdir -p "$corpus" "fuzz/seeds/$t"
  echo "== fuzz $t for ${secs}s"
  rc=0
  mkdir -p "fuzz/artifacts/$t"
  # New inputs go to the first directory; the seeds are only read.
  "$bin_dir/$t" -artifact_prefix="fuzz/artifacts/$t/" \
    -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -print_pcs=0 "$corpus" "fuzz/seeds/$t" >"$logs/$t.log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t.log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$logs/$t.log" | tail -1 | sed 's/cov: //')
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    echo "!! $t failed (exit $rc); the panic, then the end of its log:"
    grep -A2 "panicked at" "$logs/$t.log" | head -n 20 || true
    tail -n 30 "$logs/$t.log"
    ls -1 "fuzz/artifacts/$t/" 2>/dev/null | sed 's/^/   artifact: fuzz\/artifacts\/'"$t"'\//' || true
  fi
  summary+=("$(printf '%-18s %10s execs %8s exec/s  cov %6s  %s' "$t" "${execs:-?}" \
    "${rate:-?}" "${cov:-?}" "$([ "$rc" -eq 0 ] && echo ok || echo CRASH)")")
done

echo
echo "== fuzz summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]}; reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run -s none <target> fuzz/artifacts/<target>/<file>" >&2
  exit 1
fi
