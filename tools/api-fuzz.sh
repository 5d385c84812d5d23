#!/usr/bin/env bash
# Runs schemathesis (from PyPI) against a real vigil-central's OpenAPI document: every documented
# operation with generated and boundary inputs, as a park administrator. Fails on any 5xx answer or
# any answer that does not match the document. Used by .ci/run; runs alone on a fresh machine.
#
#   tools/api-fuzz.sh            # builds vigil-central (debug) if needed
#   MAX_EXAMPLES=50 tools/api-fuzz.sh
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="${VIGIL_FUZZ_VENV:-$root/target/schemathesis-venv}"
max_examples="${MAX_EXAMPLES:-25}"
max_time="${MAX_TIME_S:-240}"

if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
    echo "api-fuzz: installing schemathesis into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
fi
cargo build --quiet -p vigil-central --bin vigil-central
central="${CARGO_TARGET_DIR:-$root/target}/debug/vigil-central"

work="$(mktemp -d)"
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api_port="$(free_port)"
broker_port="$(free_port)"
cat >"$work/central.toml" <<CONF
data_dir = "data"
key_file = "central.key"

[broker]
listen = "127.0.0.1:$broker_port"

[api]
listen = "127.0.0.1:$api_port"
CONF
(
    cd "$work"
    "$central" keygen --out central.key >/dev/null
    "$central" pki init --dir pki >/dev/null
    "$central" gateway --config central.toml add gw-fuzz --enterprise ent-a \
        --key "$("$central" keygen --out gw.key)" >/dev/null 2>&1
)
password="$(cd "$work" && "$central" user --config central.toml add fuzz-admin --role park_admin --generate)"
(cd "$work" && exec "$central" run --config central.toml) >"$work/central.log" 2>&1 &
pid=$!

up=""
for _ in $(seq 1 300); do
    if curl -sf "http://127.0.0.1:$api_port/api/v1/health" >/dev/null 2>&1; then up=1; break; fi
    sleep 0.2
done
if [ -z "$up" ]; then
    echo "api-fuzz: vigil-central did not answer on port $api_port within 60 s; its log:" >&2
    tail -n 30 "$work/central.log" >&2
    exit 1
fi
login="$(curl -s -H 'content-type: application/json' \
    -d "{\"user\":\"fuzz-admin\",\"password\":\"$password\"}" \
    "http://127.0.0.1:$api_port/api/v1/auth/login")"
token="$(printf '%s' "$login" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')" || {
    echo "api-fuzz: login refused: $login" >&2
    exit 1
}

# Logging out or changing the password would end the run's own session; both have their own tests.
# Checked: no 5xx, every answer matches its documented schema and content type (errors, the
# framework's own rejections included, are application/problem+json).
status=0
cd "$work"
"$venv/bin/schemathesis" run "http://127.0.0.1:$api_port/api/v1/openapi.json" \
    --url "http://127.0.0.1:$api_port" \
    -H "Authorization: Bearer $token" \
    --checks not_a_server_error,response_schema_conformance,content_type_conformance \
    --exclude-path /api/v1/auth/logout --exclude-path /api/v1/auth/password \
    --max-examples "$max_examples" --max-time "$max_time" --seed 1 \
    --phases examples,coverage,fuzzing \
    --workers 2 --request-timeout 10 --suppress-health-check all \
    --warnings off || status=$?
if [ "$status" -ne 0 ]; then
    echo "api-fuzz: schemathesis found problems (exit $status); central's log follows" >&2
    tail -n 50 "$work/central.log" >&2
fi
exit "$status"
