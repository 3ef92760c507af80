#!/usr/bin/env bash
# The local stack's default store under `wrk -t1 -c50` posting state reports to one agent
# (issue 12's benchmark; figures in docs/load-tests.md).
#
#   bash loadtest/wrk/bench-reports.sh [SECONDS] [FILL]
#
# Starts target/release/opscore-local on a fresh data file, registers one agent through the
# signed webhook, runs wrk for SECONDS (default 15) and prints requests/s, p50/p99 and the
# process's memory. With FILL > 0 it first stores FILL reports (wrk, unmeasured), then measures
# again on the full store, and prints the data file's size and how long a restart on it takes.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-15}
FILL=${2:-0}
BIN=${OPSCORE_LOCAL_BIN:-target/release/opscore-local}
[[ -x $BIN ]] || cargo build --release --bin opscore-local
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }
DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export KEY=bench-key-$RANDOM SECRET=bench-secret-$RANDOM AGENT=bench-agent
PID=""
stop() { if [[ -n $PID ]]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }
trap 'stop; rm -rf "$DIR"' EXIT

start() {
  local store=(--data "$DIR/opscore.db")
  [[ -n ${STORE:-} ]] && store=(--store "$STORE") # STORE=memory: the in-memory adapter, for comparison
  OPSCORE_API_KEY=$KEY OPSCORE_WEBHOOK_SECRET=$SECRET RUST_LOG=warn \
    "$BIN" --port "$PORT" "${store[@]}" > "$DIR/out.log" 2>&1 &
  PID=$!
  local t0; t0=$(date +%s.%N)
  until grep -q '^READY' "$DIR/out.log" 2>/dev/null; do
    kill -0 "$PID" 2>/dev/null || { cat "$DIR/out.log"; exit 1; }
    sleep 0.005
  done
  awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "start: READY after %.3f s\n", b - a }'
}
rss() { awk '/VmRSS|VmHWM/ { printf "%s %.1f MB  ", $1, $2 / 1024 } END { print "" }' "/proc/$PID/status"; }
measure() {
  wrk -t1 -c50 -d"${1}s" -s loadtest/wrk/report.lua "http://127.0.0.1:$PORT" | grep '^RESULT'
  rss
}

start
python3 - "$PORT" "$SECRET" "$AGENT" <<'PY'
import hashlib, hmac, json, sys, time, urllib.request
port, secret, agent = sys.argv[1:]
body = json.dumps({"event_type": "REGISTER", "agent_details": {"agentId": agent, "agentName": agent, "version": "1",
    "capabilities": [], "contactEndpoint": "http://127.0.0.1:9/task", "metadata": {}}}, separators=(",", ":")).encode()
ts = str(int(time.time()))
sig = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/opscore/internal/agent/notify", body,
    {"Content-Type": "application/json", "X-AgentKit-Timestamp": ts, "X-AgentKit-Signature": sig})
print("register:", urllib.request.urlopen(req).status)
PY
echo "== empty store"
measure "$SECS"
if ((FILL > 0)); then
  echo "== filling to $FILL reports"
  while :; do
    n=$(curl -s -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PORT/v1/opscore/agent/$AGENT/state" |
      python3 -c 'import json,sys; print(json.load(sys.stdin).get("details",{}).get("n",0))' 2>/dev/null || echo 0)
    total=$(sqlite3 "$DIR/opscore.db" 'select count(*) from history' 2>/dev/null || echo "?")
    echo "  history rows: $total"
    [[ $total != "?" ]] && ((total >= FILL)) && break
    wrk -t1 -c50 -d20s -s loadtest/wrk/report.lua "http://127.0.0.1:$PORT" | grep '^RESULT' | sed 's/^/  fill /'
  done
  echo "== full store"
  measure "$SECS"
  stop
  ls -la "$DIR"/opscore.db* | awk '{ printf "  %s %.1f MB\n", $9, $5 / 1048576 }'
  echo "== restart on the full store"
  start
  rss
fi
