#!/usr/bin/env bash
# Installs what the browser test (tests/browser.rs) needs, from the package
# registries only; idempotent (a second run installs nothing):
#
#   /usr/bin/chromium   Debian's chromium package (apt-get; root or sudo).
#                       playwright-core drives it; no browser build is ever
#                       downloaded.
#   tests/browser/node_modules
#                       `npm ci` from the pinned package-lock.json
#                       (playwright-core only).
#
# Node.js and npm themselves must already be on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'install-browser-tools: %s\n' "$*"; }
die() { printf 'install-browser-tools: ERROR: %s\n' "$*" >&2; exit 1; }

command -v node >/dev/null 2>&1 || die "node is missing (apt-get install nodejs)"
command -v npm >/dev/null 2>&1 || die "npm is missing (apt-get install npm)"

if [ ! -x /usr/bin/chromium ]; then
    say "installing Debian's chromium"
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: install chromium by hand"
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        chromium fonts-dejavu-core >/dev/null
fi
[ -x /usr/bin/chromium ] || die "/usr/bin/chromium is still missing"

if [ ! -d tests/browser/node_modules/playwright-core ]; then
    say "npm ci in tests/browser"
    # No postinstall downloads: playwright-core never fetches a browser.
    (cd tests/browser && npm ci --no-audit --no-fund --ignore-scripts)
fi
[ -f tests/browser/node_modules/playwright-core/package.json ] \
    || die "tests/browser/node_modules/playwright-core is missing after npm ci"

say "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo unknown)"
say "playwright-core: $(node -p "require('./tests/browser/node_modules/playwright-core/package.json').version")"
