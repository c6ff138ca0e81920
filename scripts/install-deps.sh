#!/usr/bin/env bash
# Installs what the project needs to build, run and test (Debian 12). Idempotent and quick when
# everything is there already: apt is not touched at all then.
#   bash scripts/install-deps.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

PACKAGES=(
    build-essential cmake pkg-config
    librabbitmq-dev liblua5.4-dev lua5.4 lua-cjson lua-busted luarocks libuv1-dev
    rabbitmq-server nodejs npm valgrind clang openssl ca-certificates
    python3-pika
)

die() { echo "install-deps.sh: error: $*" >&2; exit 1; }
say() { echo "install-deps.sh: $*"; }

installed() { # package -> 0 when dpkg says it is installed
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script is for Debian"

missing=()
for p in "${PACKAGES[@]}"; do
    case $p in
    nodejs)
        # a Node.js from elsewhere (e.g. the NodeSource build) counts
        installed nodejs || command -v node >/dev/null 2>&1 || missing+=("$p") ;;
    npm)
        # NodeSource's nodejs ships npm itself and conflicts with Debian's npm package
        installed npm || command -v npm >/dev/null 2>&1 || missing+=("$p") ;;
    *)
        installed "$p" || missing+=("$p") ;;
    esac
done

if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    SUDO=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "missing packages (${missing[*]}) and not root (no sudo either)"
        SUDO=(sudo)
    fi
    aptlog=$(mktemp /tmp/install-deps-apt.XXXXXX)
    export DEBIAN_FRONTEND=noninteractive
    if ! "${SUDO[@]}" apt-get update -qq >"$aptlog" 2>&1; then
        tail -n 30 "$aptlog" >&2
        die "apt-get update failed (full log: $aptlog)"
    fi
    if ! "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$aptlog" 2>&1; then
        tail -n 30 "$aptlog" >&2
        die "apt-get install ${missing[*]} failed (full log: $aptlog)"
    fi
    rm -f "$aptlog"
    for p in "${missing[@]}"; do
        case $p in
        nodejs) command -v node >/dev/null 2>&1 || die "node still missing after apt-get install" ;;
        npm) command -v npm >/dev/null 2>&1 || die "npm still missing after apt-get install" ;;
        *) installed "$p" || die "package $p still not installed after apt-get install" ;;
        esac
    done
    say "Debian packages installed"
fi

# Node peers used by the interoperability specs
NODE_DIR="$ROOT/spec/node"
if [ -f "$NODE_DIR/package.json" ] && [ ! -d "$NODE_DIR/node_modules/amqplib" ]; then
    say "installing Node packages in spec/node"
    npmlog=$(mktemp /tmp/install-deps-npm.XXXXXX)
    if [ -f "$NODE_DIR/package-lock.json" ]; then
        npm_cmd=(npm ci)
    else
        npm_cmd=(npm install)
    fi
    if ! (cd "$NODE_DIR" && "${npm_cmd[@]}" --no-audit --no-fund --loglevel=error) >"$npmlog" 2>&1; then
        tail -n 30 "$npmlog" >&2
        die "${npm_cmd[*]} in spec/node failed (full log: $npmlog)"
    fi
    rm -f "$npmlog"
    say "Node packages installed"
fi
