#!/usr/bin/env bash
# The main job of `make run`: a real agent-like program (examples/demo/agent.py) inside a corral
# sandbox under examples/demo/policy.yaml plus builtin:pypi, next to a demo HTTPS API that lives
# in a network namespace this script creates (the only "outside host" it talks to, besides the
# package index pip itself is configured with). Shows allowed, denied and credential-injected
# traffic, then the audit trail. The run is registered with an embedded `corral server` (SQLite
# in a temp dir, on loopback) that holds the project's policy and receives the run's trail.
# Everything it creates is removed on exit.
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
  [ -n "${CTL_PID:-}" ] && kill "$CTL_PID" 2>/dev/null || true
  [ -n "${CTL_HOME:-}" ] && rm -rf "$CTL_HOME" "$CTL_CONFIG"
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

bold "4. The control plane: an embedded corral server (SQLite in a temp dir) holds that policy"
CTL_HOME=$(mktemp -d) CTL_CONFIG=$(mktemp -d)
PORT=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
CORRAL_HOME="$CTL_HOME" $CORRAL server --listen "127.0.0.1:$PORT" >"$CTL_HOME/server.log" 2>&1 &
CTL_PID=$!
export CORRAL_SERVER="http://127.0.0.1:$PORT"
for _ in $(seq 100); do curl -sf "$CORRAL_SERVER/healthz" >/dev/null && break; sleep 0.1; done
CORRAL_TOKEN=$(CORRAL_HOME="$CTL_HOME" $CORRAL server token create --name demo --role owner)
export CORRAL_TOKEN
$CORRAL team create demo
$CORRAL project create demo-project --team demo
# A project policy is not trusted like local config: its tls_ca is inline PEM, not a path.
.venv/bin/python - "$DEMO/policy.yaml" "$RUN/ca.pem" "$RUN/project.yaml" <<'PY'
import sys
policy, ca, out = sys.argv[1:]
pem = open(ca).read().strip().replace("\n", "\n      ")
import re
text = re.sub(r"tls_ca: \.run/ca\.pem.*", "tls_ca: |\n      " + pem, open(policy).read())
open(out, "w").write(text)
PY
$CORRAL policy push "$RUN/project.yaml" --project demo-project
$CORRAL policy push corral/policy/builtin/pypi.yaml --project demo-project
# ...and it reaches a private address only in ranges this host's own config permits.
echo "project_allow_private: [$API_IP/32]" > "$CTL_CONFIG/config.yaml"

bold "5. The agent runs in a sandbox: corral run --project demo-project -- python3 agent.py"
set +e
CORRAL_CONFIG="$CTL_CONFIG" $CORRAL run --project demo-project --env "DEMO_INDEX=$INDEX" \
  --env "DEMO_API=https://$API_IP:8443" -- /usr/bin/python3 - < "$DEMO/agent.py"
status=$?
set -e
echo "   agent exit status: $status"

bold "6. The audit trail of that run on this host (tamper-evident: corral audit verify)"
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

bold "7. The same run on the server: registered, its trail shipped and verified there"
$CORRAL sandbox list --project demo-project --all
$CORRAL audit verify --project demo-project
exit "$status"
