#!/usr/bin/env bash
# The main job of `make run`: a real agent-like program (examples/demo/agent.py) inside a corral
# sandbox under examples/demo/policy.yaml plus builtin:pypi, next to a demo HTTPS API that lives
# in a network namespace this script creates (the only "outside host" it talks to, besides the
# package index pip itself is configured with). Shows allowed, denied and credential-injected
# traffic, then the audit trail. Everything it creates is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
CORRAL=.venv/bin/corral
DEMO=examples/demo
RUN=$DEMO/.run
NS=corral-demo
API_IP=10.250.77.2
bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }

cleanup() {
  [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  ip link del cdemo0 2>/dev/null || true
}
trap cleanup EXIT
cleanup

bold "1. A demo API in its own network namespace ($API_IP:8443, TLS with its own CA)"
mkdir -p "$RUN"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=corral demo CA" \
  -keyout "$RUN/ca.key" -out "$RUN/ca.pem" -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$API_IP" \
  -keyout "$RUN/api.key" -out "$RUN/api.csr" 2>/dev/null
openssl x509 -req -in "$RUN/api.csr" -CA "$RUN/ca.pem" -CAkey "$RUN/ca.key" -CAcreateserial -days 1 \
  -extfile <(printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\n' "$API_IP") \
  -out "$RUN/api.pem" 2>/dev/null
ip netns add "$NS"
ip link add cdemo0 type veth peer name cdemo1
ip link set cdemo1 netns "$NS"
ip addr add 10.250.77.1/30 dev cdemo0 && ip link set cdemo0 up
ip -n "$NS" addr add "$API_IP/30" dev cdemo1 && ip -n "$NS" link set cdemo1 up && ip -n "$NS" link set lo up
TOKEN="demo-$(openssl rand -hex 12)"
DEMO_API_TOKEN="$TOKEN" ip netns exec "$NS" /usr/bin/python3 "$DEMO/api_server.py" \
  "$RUN/api.pem" "$RUN/api.key" 8443 &
SERVER_PID=$!
echo "   the real API token is known to the API and to corral's credential store, nobody else"

bold "2. The secret goes into corral's root-only store (the agent never holds it)"
printf '%s' "$TOKEN" | $CORRAL creds set demo-api-token
$CORRAL creds list

bold "3. The policy the agent runs under"
INDEX=$(.venv/bin/python -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')
$CORRAL policy resolve -p "$DEMO/policy.yaml" -p builtin:pypi

bold "4. The agent runs in a sandbox: corral run -p $DEMO/policy.yaml -p builtin:pypi -- python3 agent.py"
set +e
$CORRAL run -p "$DEMO/policy.yaml" -p builtin:pypi --env "DEMO_INDEX=$INDEX" \
  --env "DEMO_API=https://$API_IP:8443" -- /usr/bin/python3 - < "$DEMO/agent.py"
status=$?
set -e
echo "   agent exit status: $status"

bold "5. The audit trail of that run (tamper-evident: corral audit verify)"
SANDBOX=$($CORRAL audit list --type sandbox.create --limit 1 --json 2>/dev/null | .venv/bin/python -c '
import json, sys
lines = [line for line in sys.stdin if line.strip()]
print(json.loads(lines[-1]).get("sandbox", "") if lines else "")' || true)
if [ -n "$SANDBOX" ]; then
  $CORRAL audit list --sandbox "$SANDBOX"
  $CORRAL audit verify
else
  echo "   (no audit trail recorded for this run)"
fi
exit "$status"
