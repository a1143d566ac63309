#!/usr/bin/env bash
# `make demo`: start the platform on the embedded default and apply the healthcare example.
# The server stays in the foreground; use `kaip` from another shell (it finds the server through $KAIP_HOME).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export KAIP_HOME="${KAIP_HOME:-$HOME/.kaip}"
PORT="${KAIP_PORT:-8740}"

kaip up --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 100); do
  python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/readyz', timeout=1)" 2>/dev/null && break
  kill -0 $SERVER 2>/dev/null || { echo "kaip up exited; see the messages above" >&2; exit 1; }
  sleep 0.2
done

echo "== kaip apply -f examples/healthcare-chatbot/"
kaip apply -f examples/healthcare-chatbot/
for _ in $(seq 1 150); do
  phase=$(kaip get pod generate-member-records -n healthcare -o json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("status",{}).get("phase",""))')
  [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
  sleep 0.2
done
echo "== kaip get pods,configmaps -n healthcare"
kaip get pods,configmaps -n healthcare
echo "== kaip logs generate-member-records -n healthcare"
kaip logs generate-member-records -n healthcare
echo "== kaip events -n healthcare"
kaip events -n healthcare

echo "== the knowledge base (company documents and each member's own records)"
for _ in $(seq 1 300); do
  ready=$(kaip get knowledgebase member-kb -n healthcare -o json | python3 -c 'import json,sys; print(next((c["status"] for c in json.load(sys.stdin).get("status",{}).get("conditions",[]) if c["type"]=="Ready"), ""))')
  [[ "$ready" == True ]] && break
  sleep 0.2
done
kaip get knowledgebases -n healthcare
echo "== as member EVM-100001: kaip kb query member-kb 'my deductible met, my claims and prescriptions'"
MEMBER_TOKEN=$(kaip create token member-evm-100001 -n healthcare)
KAIP_TOKEN=$MEMBER_TOKEN kaip kb query member-kb "my deductible met, my claims and prescriptions" -n healthcare -k 3
cat <<MSG

Kaip is running at http://127.0.0.1:$PORT (state in $KAIP_HOME). In another shell:
  source .venv/bin/activate && kaip get pods -A
Press Ctrl-C to stop the server (workloads keep their state; the next 'kaip up' picks them up).
MSG
wait $SERVER
