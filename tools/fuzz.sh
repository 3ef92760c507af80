#!/usr/bin/env bash
# Coverage-guided fuzzing of Ops-Core's parsers (cargo fuzz / libFuzzer; targets in fuzz/).
#
#   bash tools/fuzz.sh --smoke                  # every target for $FUZZ_SMOKE_SECONDS (default 10) s: CI
#                                               # (no sanitizer unless FUZZ_SANITIZER=address)
#   bash tools/fuzz.sh --time 600 webhook ...   # long runs of the named targets (default: all), one after another
#   bash tools/fuzz.sh --seeds                  # only (re)build the seed corpora
#
# cargo fuzz needs nightly-only rustc flags (-Zsanitizer); the stable toolchain accepts them with
# RUSTC_BOOTSTRAP=1. Installs cargo-fuzz from crates.io if it is missing. Seeds: events/*.json (the
# Lambda fixtures), the AgentKit webhook vectors (events/agentkit-webhook-vectors.json), fuzz/seeds/ (stream
# records). Corpora grow in fuzz/corpus/<target> (git-ignored), crashes land in
# fuzz/artifacts/<target>, logs in fuzz/logs/[smoke/]<target>.log. Exit status non-zero on any
# crash; a crash input belongs in fuzz/regressions/<target>/ (replayed by `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
TARGETS_ALL=(webhook state_report workflow_definition lambda_request stream_record)
MODE=""
SECS=""
# AddressSanitizer for long runs; none for the smoke run (all targets are safe Rust: ASan
# adds build time and halves the exec rate, coverage feedback works without it).
SANITIZER=${FUZZ_SANITIZER:-address}
TARGETS=()
while (($#)); do
  case $1 in
    --smoke) MODE=smoke; SECS=${FUZZ_SMOKE_SECONDS:-10}; SANITIZER=${FUZZ_SANITIZER:-none} ;;
    --time) MODE=long; SECS=$2; shift ;;
    --seeds) MODE=seeds ;;
    -h | --help) sed -n 2,12p "$0"; exit 0 ;;
    *) TARGETS+=("$1") ;;
  esac
  shift
done
[[ -n $MODE ]] || { sed -n 2,12p "$0"; exit 2; }
((${#TARGETS[@]})) || TARGETS=("${TARGETS_ALL[@]}")
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

seeds() {
  python3 - "$REPO" <<'PY'
import base64, glob, json, os, sys
repo = sys.argv[1]
corpus = os.path.join(repo, "fuzz", "corpus")
def put(target, name, data):
    d = os.path.join(corpus, target); os.makedirs(d, exist_ok=True)
    if isinstance(data, str): data = data.encode()
    open(os.path.join(d, name), "wb").write(data)
# Lambda events as delivered: the fixtures.
for f in sorted(glob.glob(os.path.join(repo, "events", "*.json"))):
    ev = json.load(open(f))
    if not isinstance(ev, dict) or "requestContext" not in ev: continue
    name = os.path.basename(f)
    put("lambda_request", name, json.dumps(ev))
    body = ev.get("body") or ""
    raw = base64.b64decode(body) if ev.get("isBase64Encoded") else body.encode()
    path = ev.get("rawPath", "")
    if path.endswith("/state"): put("state_report", name, raw)
    if path.endswith("/notify"):
        h = {k.lower(): v for k, v in (ev.get("headers") or {}).items()}
        put("webhook", name, b"\x01" + h.get("x-agentkit-signature", "").encode() + b"\n" + h.get("x-agentkit-timestamp", "").encode() + b"\n" + raw)
        put("webhook", "signed-" + name, b"\x40" + raw)
    if path.endswith("/workflows") or path.endswith("/workflow"):
        yaml = "yaml" in json.dumps(ev.get("headers") or {}).lower()
        put("workflow_definition", name, (b"\x01" if yaml else b"\x00") + raw)
vec = os.path.join(repo, "events", "agentkit-webhook-vectors.json")
if os.path.exists(vec):  # in the repo: events/ keeps the real deliveries
    for i, d in enumerate(json.load(open(vec))["deliveries"]):
        raw = d["raw_body"].encode()
        put("webhook", f"vector-{i}", b"\x01" + d["header_X-AgentKit-Signature"].encode() + b"\n" + d["header_X-AgentKit-Timestamp"].encode() + b"\n" + raw)
        put("webhook", f"vector-signed-{i}", b"\x40" + raw)
sample = open(os.path.join(repo, "local", "sample-workflow.json"), "rb").read()
put("workflow_definition", "sample.json", b"\x00" + sample)
for f in sorted(glob.glob(os.path.join(repo, "fuzz", "seeds", "*", "*"))):
    put(os.path.basename(os.path.dirname(f)), "seed-" + os.path.basename(f), open(f, "rb").read())
for t in sorted(os.listdir(corpus)):
    print(f"seed corpus {t}: {len(os.listdir(os.path.join(corpus, t)))} files")
PY
}

seeds
[[ $MODE == seeds ]] && exit 0

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
T0=$(date +%s)
# A build without the sanitizer goes to its own target dir, so it never invalidates the other.
TD=()
[[ $SANITIZER == address ]] || TD=(--target-dir "fuzz/target/$SANITIZER")
LOGS=fuzz/logs
[[ $MODE == smoke ]] && LOGS=fuzz/logs/smoke
cargo fuzz build -O -s "$SANITIZER" "${TD[@]}"
echo "build (sanitizer $SANITIZER): $(($(date +%s) - T0)) s"

mkdir -p "$LOGS"
fail=0
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log=$LOGS/$t.log
  T1=$(date +%s)
  if cargo fuzz run -O -s "$SANITIZER" "${TD[@]}" "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1; then
    status=ok
  else
    status=FAILED
    fail=1
  fi
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo "?")
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9a-zA-Z]+' || echo "?")
  echo "fuzz $t: $status, $((  $(date +%s) - T1 )) s, execs $execs, $last"
  if [[ $status == FAILED ]]; then tail -40 "$log"; fi
done
exit $fail
