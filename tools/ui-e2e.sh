#!/usr/bin/env bash
# The web UI's end-to-end test (tests/tests/ui_e2e.rs + tests/ui/e2e.mjs): installs what it needs
# when missing (Debian packages chromium, fonts-noto-cjk, nodejs/npm; playwright-core from the npm
# registry per tests/ui/package-lock.json), then runs it against the real vigil-central.
# Screenshots land in docs/screenshots/ (VIGIL_SCREENSHOTS overrides). Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
fc-list 2>/dev/null | grep -q "Noto Sans CJK SC" || missing+=(fonts-noto-cjk)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
    echo "ui-e2e: installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 18 ]; then
    echo "ui-e2e: node $(node --version) is too old; playwright-core needs >= 18" >&2
    exit 1
fi

(cd tests/ui && npm ci --no-audit --no-fund --loglevel=error)

# The test builds vigil-central, vigil-edge and vigil-sim itself if they are absent.
cargo build -p vigil-central -p vigil-edge -p vigil-tools --bin vigil-central --bin vigil-edge --bin vigil-sim
cargo test -p vigil-tests --test ui_e2e -- --ignored --nocapture
