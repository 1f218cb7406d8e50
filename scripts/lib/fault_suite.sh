# Running one fault suite's test binary and printing its figures (sourced,
# not run): scripts/chaos.sh and scripts/partitions.sh.
#
#   fault_suite_run TEST TITLE [ARGS...]
#       `cargo test --test TEST` (ignored tests included, one at a time,
#       output shown, ARGS passed to the binary) with
#       DANMAKU_REQUIRE_SERVICES=1, the broker's jars fetched first; then
#       "== TITLE (N s in all)" and the `chaos …: sent=…` figure lines the
#       tests printed. Returns the tests' exit status.

fault_suite_run() {
  local test="$1" title="$2"
  shift 2
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/danmaku-target}"
  export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
  export PATH="$HOME/.cargo/bin:$PATH"
  export DANMAKU_REQUIRE_SERVICES=1
  scripts/kafka.sh fetch >/dev/null
  local out start status=0
  out="$(mktemp "/tmp/danmaku-$test.XXXXXX")"
  start=$(date +%s)
  cargo test --locked --test "$test" -- --include-ignored --nocapture --test-threads=1 "$@" \
    2>&1 | tee "$out" || status=$?
  echo
  echo "== $title ($(($(date +%s) - start)) s in all)"
  # (The harness prints "test NAME ... " before a test's own output.)
  grep -oE 'chaos [a-z-]+: sent=.*' "$out" || echo "(none printed)"
  rm -f "$out"
  return "$status"
}
