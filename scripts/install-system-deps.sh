#!/usr/bin/env bash
# Install the Debian packages Kaip's tests and demo use, when they are missing: PostgreSQL.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "PostgreSQL is missing: run 'sudo apt-get install -y postgresql' (needed by the store tests)" >&2
  exit 1
fi
echo "installing PostgreSQL from Debian's packages..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq postgresql >/dev/null
# Debian's package starts a cluster of its own; Kaip's tests start throwaway ones instead.
if command -v pg_lsclusters >/dev/null; then
  pg_lsclusters -h 2>/dev/null | while read -r ver name _; do pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true; done
fi
