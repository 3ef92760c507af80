#!/bin/sh
# Full load-test runs for docs/load-tests.md: every scenario (S1-S4, R) on the memory store, then shorter
# runs on the embedded store (dynoxide) and on DynamoDB Local. Loopback only; every run bounded.
# Usage: loadtest/run-all.sh [memory|embedded|dynamodb-local ...]   (default: all three)
set -eu
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --profile perf -p opscore-loadtest
bin=target/perf/opscore-loadgen
stores="${*:-memory embedded dynamodb-local}"
for store in $stores; do
  case "$store" in
    memory)
      "$bin" --store memory --scenario s1,s2,s3,s4,r --wait-idle 300
      "$bin" --store memory --scenario r --agents 200 --sessions-per-agent 5 --label memory-5000 ;;
    embedded|dynamodb-local)
      # Store-bound at a few hundred writes/s: smaller and shorter.
      "$bin" --store "$store" --scenario s1 --users 100 --ramp 20 --duration 60 --wait-idle 300
      "$bin" --store "$store" --scenario s2 --users 30 --ramp 10 --duration 60 --wait-idle 300
      "$bin" --store "$store" --scenario s3 --users 100 --ramp 20 --duration 60 --wait-idle 300
      "$bin" --store "$store" --scenario s4 --s4-start-users 20 --s4-step-users 20 --users 400 --wait-idle 300
      "$bin" --store "$store" --scenario r --wait-idle 300
      "$bin" --store "$store" --scenario r --agents 10 --sessions-per-agent 1 --label "$store-light" ;;
    *) echo "unknown store $store" >&2; exit 2 ;;
  esac
done
