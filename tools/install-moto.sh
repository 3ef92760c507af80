#!/usr/bin/env bash
# Installs moto's server (a real local implementation of SQS, Secrets Manager and SSM, from PyPI)
# into the git-ignored virtualenv .tmp/moto, unless it is there already. The test harness
# (tests/src/moto.rs) calls this when moto_server is missing; .ci/run calls it in its install part.
#
#   bash tools/install-moto.sh      # then: .tmp/moto/bin/moto_server -H 127.0.0.1 -p <port>
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.tmp/moto
# The extras name the services the tests use; one server process serves them all.
SPEC=${MOTO_SPEC:-"moto[server,sqs,secretsmanager,ssm]"}
if [[ -x $VENV/bin/moto_server ]]; then
  echo "moto: $($VENV/bin/python -c 'import moto; print(moto.__version__)') already in $VENV"
  exit 0
fi
mkdir -p .tmp
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "$SPEC"
echo "moto: $($VENV/bin/python -c 'import moto; print(moto.__version__)') installed in $VENV"
