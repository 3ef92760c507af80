#!/usr/bin/env bash
# Checks the SAM side of the project: template lint, `sam build` of the three functions, the glibc
# guard on the built bootstraps, and (optionally) `sam local invoke` of event fixtures.
#
#   bash tools/sam-check.sh                  # lint + build + glibc guard (the default)
#   bash tools/sam-check.sh lint             # sam validate --lint and cfn-lint only
#   bash tools/sam-check.sh build            # sam build (x86_64) + glibc guard
#   bash tools/sam-check.sh glibc            # glibc guard on .aws-sam/build only
#   bash tools/sam-check.sh invoke ENDPOINT [TABLE]
#                                            # invoke_fixtures: events/sam-invocations.txt against
#                                            # DynamoDB Local at ENDPOINT (as a container sees it,
#                                            # e.g. http://172.17.0.1:8000); needs DOCKER_HOST and
#                                            # a table (create-table below)
#   bash tools/sam-check.sh create-table ENDPOINT [TABLE]
#                                            # create the template's table in DynamoDB Local
#                                            # (ENDPOINT as the host sees it, e.g. http://127.0.0.1:8000)
#   bash tools/sam-check.sh env-json ENDPOINT [TABLE] [FILE]
#                                            # write the --env-vars file (default env.local.json)
#
# Needs tools/install-sam.sh to have run (tools/venv). Prints how long each step takes.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH="$REPO/tools/venv/bin:$PATH"
export SAM_CLI_TELEMETRY=0
# sam validate/local need a region to resolve pseudo parameters; nothing here talks to AWS.
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}

# Compiler for cargo-lambda: plain cargo (the host's gcc linker), not zig. Measured on this Debian 12
# host (glibc 2.36): a release build with the AWS SDK (aws-lc-sys), reqwest/rustls and lambda_http
# references at most GLIBC_2.34 (__libc_start_main, pthread_*), which AL2023 has; so zig buys
# nothing today and would be one more toolchain (and a second, separate build of everything).
# The guard below fails the build if that ever changes; then set
# CARGO_LAMBDA_COMPILER=cargo-zigbuild (zig from the ziglang wheel links against glibc 2.28).
# Switching compilers rebuilds everything: keep one.
export CARGO_LAMBDA_COMPILER=${CARGO_LAMBDA_COMPILER:-cargo}

# AL2023 (provided.al2023) ships glibc 2.34.
MAX_GLIBC=2.34
BUILD_DIR=.aws-sam/build
FUNCTIONS=(StateApiFunction NotifyWebhookFunction WorkflowRunnerFunction)
INVOCATIONS=${SAM_INVOCATIONS:-events/sam-invocations.txt}
DEFAULT_TABLE=ops-core-local

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
step() { echo "== sam-check: $*"; }

require_sam() {
  if ! command -v sam >/dev/null || ! command -v cfn-lint >/dev/null; then
    echo "sam-check: sam/cfn-lint not found; run: bash tools/install-sam.sh" >&2
    exit 1
  fi
}

lint() {
  local t
  t=$(now); step "sam validate --lint"
  sam validate --lint --template template.yaml
  echo "   sam validate --lint: ok in $(since "$t")"
  t=$(now); step "cfn-lint template.yaml"
  cfn-lint template.yaml
  echo "   cfn-lint: ok in $(since "$t")"
}

build() {
  local t
  t=$(now); step "sam build (Architecture=x86_64, CARGO_LAMBDA_COMPILER=$CARGO_LAMBDA_COMPILER)"
  # Only the x86_64 Rust standard library is installed here; arm64 is built by the deploy pipeline.
  # A failed build deletes .aws-sam/build (then `sam local invoke` says Runtime.InvalidEntrypoint).
  sam build --parameter-overrides Architecture=x86_64
  echo "   sam build: ok in $(since "$t")"
  glibc_guard
}

# Fails when a built bootstrap references a glibc symbol version newer than AL2023's.
glibc_guard() {
  local t fn bin max bad=0
  t=$(now); step "glibc guard (max GLIBC_ symbol version <= $MAX_GLIBC)"
  for fn in "${FUNCTIONS[@]}"; do
    bin=$BUILD_DIR/$fn/bootstrap
    if [[ ! -f $bin ]]; then
      echo "   $fn: $bin missing" >&2
      bad=1
      continue
    fi
    max=$(objdump -T "$bin" | grep -o 'GLIBC_2\.[0-9.]*' | sed 's/^GLIBC_//' | sort -uV | tail -1)
    if [[ -z $max ]]; then
      echo "   $fn: no GLIBC symbols (static?) ($(du -h "$bin" | cut -f1))"
    elif [[ "$(printf '%s\n%s\n' "$max" "$MAX_GLIBC" | sort -V | tail -1)" != "$MAX_GLIBC" ]]; then
      echo "   $fn: GLIBC_$max > $MAX_GLIBC: will not load on provided.al2023. Symbols:" >&2
      objdump -T "$bin" | grep -E "GLIBC_$max\b" | sed 's/^/     /' >&2
      bad=1
    else
      echo "   $fn: max GLIBC_$max, $(du -h "$bin" | cut -f1), $(file -b "$bin" | cut -d, -f1-2)"
    fi
  done
  ((bad == 0)) || { echo "sam-check: glibc guard failed" >&2; exit 1; }
  echo "   glibc guard: ok in $(since "$t")"
}

# Writes the --env-vars file: the template declares these variables, so SAM lets the file set them.
# The secrets are fixed local values (fixtures are signed/authorised with them); override with
# SAM_LOCAL_API_KEY / SAM_LOCAL_WEBHOOK_SECRET / SAM_LOCAL_AGENTKIT_API_URL. On AWS the functions
# read them from Secrets Manager (OPSCORE_*_SECRET_ID); here those ids are set to "" so the
# values of the environment are used and nothing calls AWS.
# Extra "KEY=VALUE" lines in $EXTRA_ENV are added for every function (a function only sees the
# ones the template declares for it).
write_env_json() {
  local endpoint=$1 table=${2:-$DEFAULT_TABLE} file=${3:-env.local.json}
  ENDPOINT=$endpoint TABLE=$table EXTRA_ENV=${EXTRA_ENV:-} \
  API_KEY=${SAM_LOCAL_API_KEY:-local-only-api-key-0000} \
  WEBHOOK_SECRET=${SAM_LOCAL_WEBHOOK_SECRET:-local-only-webhook-secret} \
  AGENTKIT=${SAM_LOCAL_AGENTKIT_API_URL:-http://127.0.0.1:9} \
  python3 - "$file" <<'PY'
import json, os, sys
common = {
    "OPSCORE_TABLE_NAME": os.environ["TABLE"],
    "OPSCORE_DDB_ENDPOINT": os.environ["ENDPOINT"],
    "RUST_LOG": os.environ.get("RUST_LOG", "info"),
}
doc = {
    "Parameters": common,
    "StateApiFunction": {**common, "OPSCORE_API_KEY": os.environ["API_KEY"], "OPSCORE_API_KEY_SECRET_ID": ""},
    "NotifyWebhookFunction": {
        **common,
        "OPSCORE_WEBHOOK_SECRET": os.environ["WEBHOOK_SECRET"],
        "OPSCORE_WEBHOOK_SECRET_ID": "",
    },
    # No timer queue under `sam local invoke` (no SQS the container could reach): the runner's
    # timers wait for the sweep; its SQS handler still answers the SQS fixtures.
    "WorkflowRunnerFunction": {**common, "AGENTKIT_API_URL": os.environ["AGENTKIT"],
                               "OPSCORE_TIMER_QUEUE_URL": ""},
}
for line in os.environ["EXTRA_ENV"].splitlines():
    if line.strip():
        key, _, value = line.strip().partition("=")
        for section in doc.values():
            section[key] = value
with open(sys.argv[1], "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
PY
  echo "   wrote $file (endpoint $endpoint, table $table)"
}

# Creates the template's table (keys, GSIs, stream, TTL) in DynamoDB Local, from template.yaml itself.
create_local_table() {
  local endpoint=$1 table=${2:-$DEFAULT_TABLE} t
  t=$(now); step "create table $table at $endpoint"
  AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local \
  "$REPO/tools/venv/bin/python" - "$endpoint" "$table" <<'PY'
import sys, boto3
from samtranslator.yaml_helper import yaml_parse
endpoint, name = sys.argv[1], sys.argv[2]
props = yaml_parse(open("template.yaml").read())["Resources"]["Table"]["Properties"]
ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
if name in ddb.list_tables()["TableNames"]:
    print(f"   table {name} exists")
    sys.exit(0)
ddb.create_table(
    TableName=name,
    BillingMode=props["BillingMode"],
    AttributeDefinitions=props["AttributeDefinitions"],
    KeySchema=props["KeySchema"],
    GlobalSecondaryIndexes=props["GlobalSecondaryIndexes"],
    StreamSpecification={"StreamEnabled": True, **props["StreamSpecification"]},
)
ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
ttl = props["TimeToLiveSpecification"]
ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": ttl["Enabled"]})
print(f"   table {name} created")
PY
  echo "   create table: ok in $(since "$t")"
}

# ==================================================================================================
# invoke_fixtures ENDPOINT [TABLE]
#
# Runs `sam local invoke <Function> -e events/<fixture> --env-vars <generated json> --skip-pull-image`
# for every line of events/sam-invocations.txt ("<Function> <fixture file under events/> <expected>",
# where <expected> is an HTTP statusCode, `ok` for "returned without a Lambda error", or
# `failures=<id,...>` for an SQS batch's exact batchItemFailures, in order; a `+emf` suffix, e.g.
# `401+emf`, also requires a CloudWatch embedded-metric-format line of namespace OpsCore in the
# function's log output, docs/operations.md) and checks
# each response. Lines "@env KEY=VALUE" in that file set a variable for every function (only
# variables the template declares reach a function). ENDPOINT is DynamoDB Local as the container
# sees it (http://172.17.0.1:<port>).
# Needs: a successful `build`, DOCKER_HOST (tools/docker-standin.sh), the table (create_local_table).
# ==================================================================================================
invoke_fixtures() {
  local endpoint=$1 table=${2:-$DEFAULT_TABLE}
  local env_json=$REPO/.tmp/sam-env.json t t1 fn fixture expected rest out got emf n=0 failed=0
  t=$(now); step "invoke fixtures from $INVOCATIONS (DynamoDB at $endpoint, table $table)"
  if ! grep -qvE '^[[:space:]]*(#|@env|$)' "$INVOCATIONS" 2>/dev/null; then
    echo "   no invocations listed in $INVOCATIONS: nothing to invoke"
    return 0
  fi
  [[ -n ${DOCKER_HOST:-} ]] || { echo "sam-check: DOCKER_HOST unset (run tools/docker-standin.sh)" >&2; exit 1; }
  mkdir -p "$REPO/.tmp"
  EXTRA_ENV=$(sed -n 's/^[[:space:]]*@env[[:space:]]\{1,\}//p' "$INVOCATIONS") \
    write_env_json "$endpoint" "$table" "$env_json"
  while read -r fn fixture expected rest; do
    [[ -z ${fn:-} || $fn == \#* || $fn == @env ]] && continue
    if [[ -z ${fixture:-} || -z ${expected:-} || -n ${rest:-} ]]; then
      echo "   bad line in $INVOCATIONS: $fn $fixture $expected $rest" >&2
      failed=$((failed + 1)); continue
    fi
    n=$((n + 1))
    t1=$(now)
    emf=""
    if [[ $expected == *+emf ]]; then emf=1; expected=${expected%+emf}; fi
    if ! out=$(sam local invoke "$fn" -e "events/$fixture" --env-vars "$env_json" --skip-pull-image \
        --parameter-overrides "Architecture=x86_64 AgentKitApiUrl=http://127.0.0.1:9" \
        2>"$REPO/.tmp/sam-invoke.log" </dev/null); then
      echo "   FAIL $fn $fixture: sam local invoke failed; log:" >&2
      { tail -30 "$REPO/.tmp/sam-invoke.log"; echo; } | sed 's/^/     /' >&2
      failed=$((failed + 1)); continue
    fi
    got=$(printf '%s' "$out" | python3 -c '
import json, sys
text = sys.stdin.read().strip()
try:
    doc = json.loads(text.splitlines()[-1]) if text else None
except ValueError:
    print("unparsable"); sys.exit()
if isinstance(doc, dict) and "errorType" in doc:
    print("error:" + str(doc.get("errorType")))
elif isinstance(doc, dict) and "statusCode" in doc:
    print(doc["statusCode"])
elif isinstance(doc, dict) and isinstance(doc.get("batchItemFailures"), list):
    print("failures=" + ",".join(str(f.get("itemIdentifier")) for f in doc["batchItemFailures"]))
else:
    print("ok")
')
    if [[ -n $emf ]] && ! python3 - "$REPO/.tmp/sam-invoke.log" <<'PY'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    start = line.find('{"_aws"')
    if start < 0:
        continue
    try:
        doc = json.loads(line[start:])
    except ValueError:
        continue
    if any(d.get("Namespace") == "OpsCore" for d in doc["_aws"].get("CloudWatchMetrics", [])):
        print("   emf  " + line[start:].strip())
        sys.exit(0)
sys.exit(1)
PY
    then
      echo "   FAIL $fn $fixture: no EMF line of namespace OpsCore in the function's output; log:" >&2
      { tail -30 "$REPO/.tmp/sam-invoke.log"; echo; } | sed 's/^/     /' >&2
      failed=$((failed + 1)); continue
    fi
    if [[ $got == "$expected" || ( $expected == ok && $got != error:* && $got != unparsable ) ]]; then
      echo "   ok   $fn $fixture -> $got ($(since "$t1"))"
    else
      echo "   FAIL $fn $fixture: expected $expected, got $got ($(since "$t1")); response: $out" >&2
      { tail -30 "$REPO/.tmp/sam-invoke.log"; echo; } | sed 's/^/     /' >&2
      failed=$((failed + 1))
    fi
  done < "$INVOCATIONS"
  echo "   sam local invoke: $n run, $failed failed, in $(since "$t")"
  ((failed == 0)) || exit 1
}

main() {
  local t0
  t0=$(now)
  case "${1:-all}" in
    all) require_sam; lint; build ;;
    lint) require_sam; lint ;;
    build) require_sam; build ;;
    glibc) glibc_guard ;;
    invoke) require_sam; invoke_fixtures "${2:?ENDPOINT}" "${3:-}" ;;
    create-table) create_local_table "${2:?ENDPOINT}" "${3:-}" ;;
    env-json) write_env_json "${2:?ENDPOINT}" "${3:-}" "${4:-}" ;;
    *) sed -n '2,22p' "$0" >&2; exit 2 ;;
  esac
  echo "== sam-check: ${1:-all} done in $(since "$t0")"
}

main "$@"; exit $?
