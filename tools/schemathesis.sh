#!/usr/bin/env bash
# The OpenAPI contract, checked by schemathesis (from PyPI, pinned) against the local stack.
#
#   bash tools/schemathesis.sh --smoke              # CI: the default store, a few examples per operation
#   bash tools/schemathesis.sh [--store file|memory] [--examples N] [--max-time S]
#   (file: the default SQLite store, in a data file under .tmp/schemathesis/file)
#
# Starts target/{release,debug}/opscore-local (builds the debug one if neither exists) on a free
# 127.0.0.1 port with a known API key and webhook secret, runs every operation of its
# /openapi.json, authenticated, with the checks not_a_server_error, response_schema_conformance,
# status_code_conformance and content_type_conformance, and stops the stack (by its PID).
# The venv lives in tools/venv-st (git-ignored). Reports land in .tmp/schemathesis/<store>/.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ST_VERSION=4.32.5
STORE=file
EXAMPLES=100
MAX_TIME=""
while (($#)); do
  case $1 in
    --smoke) EXAMPLES=${ST_SMOKE_EXAMPLES:-8} ;;
    --store) STORE=$2; shift ;;
    --examples) EXAMPLES=$2; shift ;;
    --max-time) MAX_TIME=$2; shift ;;
    -h | --help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

VENV=$REPO/tools/venv-st
if [[ ! -x $VENV/bin/schemathesis ]] || ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$ST_VERSION"; then
  python3 -m venv "$VENV"
  echo '*' >"$VENV/.gitignore"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
fi

BIN=""
for b in target/release/opscore-local target/debug/opscore-local; do
  if [[ -x $b ]]; then BIN=$b; break; fi
done
if [[ -z $BIN ]]; then
  cargo build -p opscore-local
  BIN=target/debug/opscore-local
fi

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KEY=st-key-$RANDOM$RANDOM
SECRET=st-secret-$RANDOM$RANDOM
OUT=$REPO/.tmp/schemathesis/$STORE
rm -rf "$OUT"
mkdir -p "$OUT"
OPSCORE_API_KEY=$KEY OPSCORE_WEBHOOK_SECRET=$SECRET AGENTKIT_API_URL=http://127.0.0.1:9 RUST_LOG=${RUST_LOG:-warn} \
  "$BIN" --port "$PORT" $(if [[ $STORE == file ]]; then echo --data "$OUT/opscore.db"; else echo --store "$STORE"; fi) \
  >"$OUT/stack.log" 2>&1 &
STACK_PID=$!
trap 'kill "$STACK_PID" 2>/dev/null || true; wait "$STACK_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q '^READY' "$OUT/stack.log" && break
  kill -0 "$STACK_PID" 2>/dev/null || { cat "$OUT/stack.log" >&2; exit 1; }
  sleep 0.1
done
grep -q '^READY' "$OUT/stack.log" || { echo "stack did not start" >&2; cat "$OUT/stack.log" >&2; exit 1; }
URL=http://127.0.0.1:$PORT

# Something to find: an agent (registered through the signed webhook) and its state.
AGENT=st-agent
BODY='{"event_type":"REGISTER","agent_details":{"agentId":"st-agent","agentName":"st","version":"1","contactEndpoint":"http://127.0.0.1:9/task"}}'
TS=$(date +%s)
SIG=$(python3 -c 'import hmac,hashlib,sys; print(hmac.new(sys.argv[1].encode(), (sys.argv[2]+"."+sys.argv[3]).encode(), hashlib.sha256).hexdigest())' "$SECRET" "$TS" "$BODY")
curl -fsS -o /dev/null -X POST "$URL/v1/opscore/internal/agent/notify" -H 'content-type: application/json' \
  -H "x-agentkit-timestamp: $TS" -H "x-agentkit-signature: $SIG" --data "$BODY"
curl -fsS -o /dev/null -X POST "$URL/v1/opscore/agent/$AGENT/state" -H "authorization: Bearer $KEY" \
  -H 'content-type: application/json' --data "{\"agentId\":\"$AGENT\",\"timestamp\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\",\"state\":\"idle\"}"

ARGS=(run "$URL/openapi.json"
  --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance
  -H "Authorization: Bearer $KEY"
  --max-examples "$EXAMPLES" --seed "${ST_SEED:-20261124}" --workers 1 --request-timeout 20
  --suppress-health-check all --no-shrink
  --report junit,ndjson --report-dir "$OUT")
[[ -n $MAX_TIME ]] && ARGS+=(--max-time "$MAX_TIME")
T0=$(date +%s)
set +e
# From $OUT, so its example database (.schemathesis/) stays out of the work tree.
(cd "$OUT" && "$VENV/bin/schemathesis" "${ARGS[@]}") 2>&1 | tee "$OUT/run.log"
RC=${PIPESTATUS[0]}
set -e
# Every request sent and its answer is in the NDJSON report.
REQS=$(cat "$OUT"/*.ndjson | grep -o '"response":{"status_code":[0-9]*' | wc -l || true)
S5XX=$(cat "$OUT"/*.ndjson | grep -o '"response":{"status_code":5[0-9][0-9]' | wc -l || true)
echo "schemathesis ($STORE store): exit $RC in $(($(date +%s) - T0)) s; requests with responses: $REQS, of which 5xx: $S5XX"
exit "$RC"
