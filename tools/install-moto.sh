#!/usr/bin/env bash
# moto's server (PyPI), a real local implementation of SQS, Secrets Manager and SSM, into the
# git-ignored virtualenv .tmp/moto. The tests (opscore_tests::moto) and .ci/run use
# .tmp/moto/bin/moto_server. Idempotent: does nothing when the server is already installed.
#   bash tools/install-moto.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${OPSCORE_MOTO_VENV:-.tmp/moto}
# Pinned so a new moto cannot change the behaviour under test between two runs.
MOTO_VERSION=${OPSCORE_MOTO_VERSION:-5.2.5}
mkdir -p "$(dirname "$VENV")"
# Tests of several processes may install at once (the harness calls this script): one at a time.
exec 9>"$VENV.lock"
flock 9
if [[ -x $VENV/bin/moto_server ]] && "$VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  echo "moto $MOTO_VERSION already in $VENV"
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server,sqs,secretsmanager,ssm]==$MOTO_VERSION"
echo "moto $("$VENV/bin/python" -c 'import moto; print(moto.__version__)') installed in $VENV"
