#!/usr/bin/env bash
# The partition suite (tests/partitions.rs) alone, with its figures: under
# steady load it cuts, one at a time and for SECONDS each, a front from
# Redis, a front from Kafka, the processor from Kafka and a front from
# everything, then heals, and checks that every acknowledged message is
# stored exactly once, that viewers (on the other front) get each stored
# message once, that the cut process answers (503 with a reason, never a
# hang) and that everything resumes by itself. Each process runs in a
# network namespace of its own on a private bridge; a cut drops packets with
# nftables. Needs root, `ip` (iproute2) and `nft` (nftables; scripts/test.sh
# installs it), plus what the fault suite needs (redis-server, java and mvn
# for Kafka, whose jars are fetched once here). Fails (never skips) when one
# is missing.
#
# Usage: scripts/partitions.sh [SECONDS [extra args for the test binary]]
#   SECONDS: how long each cut lasts (default 10; scripts/test.sh runs 5).
# Prints one line per cut:
#   chaos cut-<what>: sent=.. acked=.. refused=.. stored=.. delivered=..
#   duplicates=0 lost_acked=0 recovery_s=.. (+ the cut's own figures)
# Env: DANMAKU_TEST_NODE_LOGS=DIR keeps each danmaku process's log there.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
[ $# -gt 0 ] && shift
case "$seconds" in
  '' | *[!0-9]*) echo "partitions.sh: SECONDS must be a whole number" >&2; exit 2 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
  echo "partitions.sh: needs root (network namespaces and nftables)" >&2
  exit 1
fi
export DANMAKU_PARTITION_SECONDS="$seconds"
. scripts/lib/fault_suite.sh
fault_suite_run partitions "partition figures, $seconds s cuts" "$@"
