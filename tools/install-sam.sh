#!/usr/bin/env bash
# Installs the AWS SAM CLI, cargo-lambda, zig and cfn-lint into a git-ignored venv (tools/venv),
# and exposes SAM's bundled Lambda Runtime Interface Emulator as tools/bin/aws-lambda-rie.
#
# Idempotent: a stamp file in the venv records the pinned versions; when it matches (and the
# executables are there) nothing is installed again. Everything comes from PyPI (prebuilt wheels):
# building cargo-lambda from crates.io takes ~19 minutes on 2 cores, the wheel takes seconds.
#
# Usage: bash tools/install-sam.sh        # then: export PATH="$PWD/tools/venv/bin:$PATH"
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned versions (checked together on this machine; bump them together and re-run sam-check.sh).
SAM_VERSION=1.170.0
CARGO_LAMBDA_VERSION=1.9.2
ZIGLANG_VERSION=0.15.2
CFN_LINT_VERSION=1.58.0

VENV=tools/venv
BIN=tools/bin
PINS="aws-sam-cli==$SAM_VERSION cargo-lambda==$CARGO_LAMBDA_VERSION ziglang==$ZIGLANG_VERSION cfn-lint==$CFN_LINT_VERSION"
STAMP="$VENV/.opscore-pins"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

t0=$(now)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$PINS" && -x "$VENV/bin/sam" && -x "$VENV/bin/cargo-lambda" && -x "$VENV/bin/cfn-lint" ]]; then
  echo "install-sam: already installed ($PINS)"
else
  if [[ ! -x "$VENV/bin/python" ]]; then
    t=$(now)
    python3 -m venv "$VENV"
    echo "install-sam: venv created in $(since "$t")"
  fi
  t=$(now)
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  echo "install-sam: pip upgraded in $(since "$t")"
  t=$(now)
  # shellcheck disable=SC2086 # PINS is a list of requirement specifiers
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PINS
  echo "install-sam: $PINS installed in $(since "$t")"
  printf '%s' "$PINS" > "$STAMP"
fi

# The runtime interface emulator ships inside the SAM CLI wheel (a static x86_64 binary).
RIE=$("$VENV/bin/python" - <<'PY'
import os, samcli
print(os.path.join(os.path.dirname(samcli.__file__), "local", "rapid", "aws-lambda-rie-x86_64"))
PY
)
if [[ ! -f "$RIE" ]]; then
  echo "install-sam: runtime interface emulator not found at $RIE" >&2
  exit 1
fi
mkdir -p "$BIN"
ln -sfn "$(realpath "$RIE")" "$BIN/aws-lambda-rie"
chmod +x "$RIE" 2>/dev/null || true

echo "install-sam: sam $("$VENV/bin/sam" --version | awk '{print $NF}'), $("$VENV/bin/cargo-lambda" lambda --version 2>/dev/null | head -1), zig $("$VENV/bin/python" -m ziglang version), cfn-lint $("$VENV/bin/cfn-lint" --version | awk '{print $NF}')"
echo "install-sam: runtime emulator at $BIN/aws-lambda-rie"
echo "install-sam: done in $(since "$t0"); use: export PATH=\"$PWD/$VENV/bin:\$PATH\""
