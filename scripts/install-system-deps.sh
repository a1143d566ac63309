#!/usr/bin/env bash
# Install the Debian packages Kaip's tests and demo use, when they are missing: PostgreSQL (store tests),
# Prometheus (the serving metrics integration test) and a C compiler (the LLM engine builds its attention kernel on
# first use; without one it falls back to a slower torch path, and its kernel test fails), and wrk (the gateway
# benchmark's load generator).
set -euo pipefail
missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v cc >/dev/null || missing+=(gcc)
command -v wrk >/dev/null || missing+=(wrk)
if [ "${#missing[@]}" = 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "missing: run 'sudo apt-get install -y ${missing[*]}' (needed by the store, serving and engine tests and the gateway benchmark)" >&2
  exit 1
fi
echo "installing ${missing[*]} from Debian's packages..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
# Debian's packages start services of their own; Kaip's tests start throwaway ones instead.
if command -v pg_lsclusters >/dev/null; then
  pg_lsclusters -h 2>/dev/null | while read -r ver name _; do pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true; done
fi
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus 2>/dev/null || true
  systemctl disable prometheus 2>/dev/null || true
elif [ -x /etc/init.d/prometheus ]; then
  /etc/init.d/prometheus stop >/dev/null 2>&1 || true
fi
