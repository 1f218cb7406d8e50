#!/usr/bin/env bash
# The fault suite (tests/chaos.rs) alone, with its figures: under steady load
# it SIGKILLs and restarts, one at a time, Redis, the broker, MariaDB, a
# processor and a front (and freezes Redis with SIGSTOP: fronts must refuse at
# once, then serve within 1.5 s of the thaw), and checks that every
# acknowledged message is stored exactly once, viewers resume from their cursors and each role recovers by
# itself. It starts its own redis-server, Apache Kafka (scripts/kafka.sh, one
# KRaft node; its log survives the kill) and MariaDB on free loopback ports,
# so it needs only the programs (java and mvn for Kafka, whose jars are
# fetched once here); scripts/test.sh installs them (and runs this suite too,
# without printing the figures).
#
# Usage: scripts/chaos.sh [extra args for the test binary, e.g. a test name]
# Prints one line per fault:
#   chaos <fault>: sent=.. acked=.. refused=.. stored=.. delivered=..
#   duplicates=0 lost_acked=0 recovery_s=.. (+ fault-specific figures)
# Env: DANMAKU_TEST_NODE_LOGS=DIR keeps each danmaku process's log there.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/fault_suite.sh
fault_suite_run chaos "fault figures" "$@"
