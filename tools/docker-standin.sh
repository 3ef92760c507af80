#!/usr/bin/env bash
# A private Docker engine and a stand-in Lambda base image, so `sam local invoke` / `start-api` work
# on a machine with no Docker daemon and no container registry (see docs/deploy.md).
#
#   eval "$(bash tools/docker-standin.sh)"   # start (or reuse) dockerd, build the image; prints the export line
#   bash tools/docker-standin.sh stop        # stop the dockerd this script started (by its pidfile)
#   bash tools/docker-standin.sh status
#
# stdout carries only `export DOCKER_HOST=...`; progress goes to stderr.
#
# The engine is Debian's docker.io, with its own data and exec roots under $OPSCORE_DOCKER_DIR
# (default: <repo>/.tmp/docker, git-ignored; a folder under $TMPDIR when the repo path is long) and
# its own socket. No iptables rules, published ports on 127.0.0.1 only. The default bridge
# (docker0, 172.17.0.1) stays: SAM publishes ports, and the containers reach DynamoDB Local on the
# host through it.
#
# The image public.ecr.aws/lambda/provided:al2023-x86_64 is a ~5 MB stand-in: static busybox plus
# the host's glibc. It proves the SAM wiring, the environment, the event shapes and the bootstrap,
# not AL2023 compatibility (tools/sam-check.sh guards the glibc symbol versions separately).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

D=${OPSCORE_DOCKER_DIR:-$REPO/.tmp/docker}
# Unix socket paths (ours and containerd's under the exec root) must stay short: fall back to a
# folder under $TMPDIR (named after the repo path) when the repo lives deep.
if [[ -z ${OPSCORE_DOCKER_DIR:-} ]] && ((${#D} > 60)); then
  D=${TMPDIR:-/tmp}/opscore-docker-$(printf '%s' "$REPO" | md5sum | cut -c1-8)
fi
SOCK=$D/docker.sock
PIDFILE=$D/dockerd.pid
LOG=$D/dockerd.log
IMAGE=public.ecr.aws/lambda/provided:al2023-x86_64
# Bump when the image's contents change: an image with another label is rebuilt.
STANDIN_VERSION=3

log() { echo "docker-standin: $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

our_pid() {
  [[ -f $PIDFILE ]] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]] || return 1
  echo "$pid"
}

stop() {
  local pid
  if ! pid=$(our_pid); then
    log "no dockerd of ours is running ($PIDFILE)"
    return 0
  fi
  log "stopping dockerd $pid"
  kill -TERM "$pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { log "stopped"; return 0; }
    sleep 0.2
  done
  log "dockerd $pid did not stop in 20 s; sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
}

case "${1:-start}" in
  stop) stop; exit 0 ;;
  status)
    if pid=$(our_pid); then log "dockerd $pid running, DOCKER_HOST=unix://$SOCK"; else log "not running"; fi
    exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

t0=$(now)

# ---------------------------------------------------------------- packages
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
if ((${#missing[@]})); then
  t=$(now)
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  log "installed ${missing[*]} in $(since "$t")"
fi
BUSYBOX=$(dpkg -L busybox-static | grep -E '/bin/busybox$' | head -1)
[[ -x $BUSYBOX ]] || { log "static busybox not found"; exit 1; }

# ---------------------------------------------------------------- dockerd
mkdir -p "$D/data" "$D/exec"
if (( ${#SOCK} > 100 )); then
  log "socket path too long for a unix socket ($SOCK); set OPSCORE_DOCKER_DIR to a shorter folder"
  exit 1
fi
export DOCKER_HOST=unix://$SOCK
if pid=$(our_pid); then
  log "reusing dockerd $pid"
else
  t=$(now)
  rm -f "$SOCK" "$PIDFILE"
  # setsid: its own session, so a Ctrl-C or a job-control kill of the caller does not take it down;
  # `stop` ends it by its pidfile.
  setsid dockerd --host "unix://$SOCK" --data-root "$D/data" --exec-root "$D/exec" --pidfile "$PIDFILE" \
    --iptables=false --ip6tables=false --ip=127.0.0.1 >"$LOG" 2>&1 < /dev/null &
  for _ in $(seq 1 150); do
    docker version --format '{{.Server.Version}}' >/dev/null 2>&1 && break
    sleep 0.2
  done
  if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    log "dockerd did not come up in 30 s; last lines of $LOG:"
    tail -20 "$LOG" >&2
    exit 1
  fi
  log "dockerd $(docker version --format '{{.Server.Version}}') up in $(since "$t") (pid $(cat "$PIDFILE"), log $LOG)"
fi

# ---------------------------------------------------------------- stand-in image
if [[ "$(docker image inspect -f '{{index .Config.Labels "opscore.standin"}}' "$IMAGE" 2>/dev/null)" == "$STANDIN_VERSION" ]]; then
  log "image $IMAGE present (stand-in v$STANDIN_VERSION)"
else
  t=$(now)
  R=$(mktemp -d "${TMPDIR:-/tmp}/opscore-rootfs.XXXXXX")
  trap 'rm -rf "$R"' EXIT
  mkdir -p "$R"/{bin,usr/bin,lib/x86_64-linux-gnu,lib64,etc,var/task,var/runtime,opt,tmp}
  chmod 1777 "$R/tmp"
  cp "$BUSYBOX" "$R/usr/bin/busybox"
  for a in sh mv chmod cp rm ls cat env mkdir ln echo sleep; do
    ln -s busybox "$R/usr/bin/$a"
    ln -s ../usr/bin/busybox "$R/bin/$a"
  done
  # libc and its companions; the pthread/dl/rt stubs matter for binaries linked against a glibc
  # older than 2.34 (zig's default target), which name them as separate libraries.
  for l in libc.so.6 libm.so.6 libgcc_s.so.1 libpthread.so.0 libdl.so.2 librt.so.1; do
    cp -L "/lib/x86_64-linux-gnu/$l" "$R/lib/x86_64-linux-gnu/$l"
  done
  cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib64/ld-linux-x86-64.so.2"
  # CA bundle, where AL2023 and Debian keep it (HTTPS clients, e.g. the runner's AgentKit calls).
  if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    mkdir -p "$R/etc/pki/tls/certs" "$R/etc/ssl/certs"
    cp -L /etc/ssl/certs/ca-certificates.crt "$R/etc/pki/tls/certs/ca-bundle.crt"
    ln -s ../../pki/tls/certs/ca-bundle.crt "$R/etc/ssl/certs/ca-certificates.crt"
  fi
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' > "$R/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' > "$R/etc/group"
  tar -C "$R" -c . | docker import \
    -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin LAMBDA_TASK_ROOT=/var/task LAMBDA_RUNTIME_DIR=/var/runtime' \
    -c 'WORKDIR /var/task' -c "LABEL opscore.standin=$STANDIN_VERSION" - "$IMAGE" >/dev/null
  # SAM derives "<tag>-rapid-<arch>" images from this one and reuses them: drop the stale ones.
  docker images --format '{{.Repository}}:{{.Tag}}' public.ecr.aws/lambda/provided | grep -- '-rapid-' |
    xargs -r docker rmi -f >/dev/null 2>&1 || true
  log "image $IMAGE built in $(since "$t") ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1f MB", $1/1e6}'))"
fi

log "ready in $(since "$t0")"
echo "export DOCKER_HOST=unix://$SOCK"
