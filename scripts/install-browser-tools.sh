#!/usr/bin/env bash
# Installs what the browser test (tests/browser.rs) needs, from the package
# registries only; idempotent (a second run installs nothing):
#
#   /usr/bin/chromium   Debian's chromium package (apt-get; root or sudo).
#                       playwright-core drives it; no browser build is ever
#                       downloaded.
#   tests/browser/node_modules
#                       `npm ci` from the pinned package-lock.json
#                       (playwright-core only); run again when the installed
#                       version is not the locked one.
#
# Node.js 20+ and npm must already be on PATH (scripts/test.sh sees to it).
# Quiet; a failing install prints its whole output and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'install-browser-tools: %s\n' "$*"; }
die() { printf 'install-browser-tools: ERROR: %s\n' "$*" >&2; exit 1; }

# quietly CMD...: runs CMD with its output kept aside, printed only on failure.
quietly() {
    local out rc=0
    out=$(mktemp)
    "$@" >"$out" 2>&1 || rc=$?
    [ "$rc" -eq 0 ] || cat "$out" >&2
    rm -f "$out"
    return "$rc"
}

command -v node >/dev/null 2>&1 || die "node is missing (scripts/test.sh installs Node.js 20+)"
command -v npm >/dev/null 2>&1 || die "npm is missing (scripts/test.sh installs Node.js 20+ with npm)"

if [ ! -x /usr/bin/chromium ]; then
    say "installing Debian's chromium"
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: install chromium by hand"
        sudo=(sudo)
    fi
    apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600)
    quietly "${apt[@]}" update || die "apt-get update failed"
    quietly "${apt[@]}" install -y --no-install-recommends chromium fonts-dejavu-core \
        || die "apt-get install chromium failed"
fi
[ -x /usr/bin/chromium ] || die "/usr/bin/chromium is still missing"
chromium_version=$(/usr/bin/chromium --version 2>/dev/null) || die "/usr/bin/chromium --version fails"

locked=$(node -p "require('./tests/browser/package-lock.json').packages['node_modules/playwright-core'].version")
installed() { node -p "require('./tests/browser/node_modules/playwright-core/package.json').version" 2>/dev/null; }
if [ "$(installed || true)" != "$locked" ]; then
    say "npm ci in tests/browser (playwright-core $locked)"
    # No postinstall downloads: playwright-core never fetches a browser.
    (cd tests/browser && quietly npm ci --no-audit --no-fund --ignore-scripts) \
        || die "npm ci in tests/browser failed"
fi
[ "$(installed || true)" = "$locked" ] \
    || die "tests/browser/node_modules/playwright-core is not $locked after npm ci"

say "$chromium_version, playwright-core $locked"
