#!/usr/bin/env bash
# The project's main job, end to end:
#   bash scripts/demo.sh
# installs what is missing, builds, starts a private RabbitMQ node (stopped on exit), runs the
# worker host `build/amqp-delegate run scripts/adder.lua`, calls it from Lua 5.4 with
# require("amqp_delegate").delegator{...}:invoke("adder", 10, 15) -- which prints 25 --
# then stops the worker with SIGTERM and waits for it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
BUILD="$ROOT/build"
BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo}

section() { printf '\n==================== %s ====================\n' "$*"; }
die() { echo "demo.sh: error: $*" >&2; exit 1; }

section "dependencies"
bash "$ROOT/scripts/install-deps.sh"
echo "dependencies ok"

section "build (CMake, $BUILD_TYPE)"
[ -f "$ROOT/CMakeLists.txt" ] || die "CMakeLists.txt not found in $ROOT: nothing to build"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" >/dev/null || die "cmake configure failed"
cmake --build "$BUILD" -j2 || die "build failed"
[ -x "$BUILD/amqp-delegate" ] || die "the build made no $BUILD/amqp-delegate"
[ -f "$ROOT/scripts/adder.lua" ] || die "scripts/adder.lua not found"

section "private RabbitMQ node"
RABBITMQ_DIR=$(mktemp -d /tmp/amqp-delegate-demo.XXXXXX)
worker_pid=""
worker_log="$RABBITMQ_DIR.worker.log"
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$worker_pid" ] && kill -0 "$worker_pid" 2>/dev/null; then
        kill -TERM "$worker_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$worker_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$worker_pid" 2>/dev/null || true
    fi
    if [ -d "$RABBITMQ_DIR" ]; then
        bash "$ROOT/scripts/rabbitmq.sh" stop "$RABBITMQ_DIR" >/dev/null 2>&1 || true
        rm -rf "$RABBITMQ_DIR"
    fi
    rm -f "$worker_log"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
bash "$ROOT/scripts/rabbitmq.sh" start "$RABBITMQ_DIR" >/dev/null || die "could not start RabbitMQ"
# shellcheck disable=SC1091
. "$RABBITMQ_DIR/env"
export AMQP_URL
export LUA_CPATH="$BUILD/?.so;;"
unset LUA_CPATH_5_4
export PATH="$BUILD:$PATH"
echo "RabbitMQ $RABBITMQ_NODENAME at $AMQP_URL"

section "worker: amqp-delegate run scripts/adder.lua"
echo "\$ amqp-delegate run --url $AMQP_URL scripts/adder.lua &"
"$BUILD/amqp-delegate" run --url "$AMQP_URL" "$ROOT/scripts/adder.lua" </dev/null >"$worker_log" 2>&1 &
worker_pid=$!
ready=0
for _ in $(seq 1 100); do          # up to 10 s
    if grep -q ready "$worker_log"; then ready=1; break; fi
    if ! kill -0 "$worker_pid" 2>/dev/null; then
        cat "$worker_log" >&2
        wait "$worker_pid" && code=0 || code=$?
        worker_pid=""
        die "the worker exited with status $code before it was ready"
    fi
    sleep 0.1
done
shown=$(wc -l < "$worker_log")
sed 's/^/  worker | /' "$worker_log"
[ $ready = 1 ] || echo "demo.sh: warning: no 'ready' line from the worker after 10 s; calling anyway" >&2

section "delegator: invoke(\"adder\", 10, 15) from Lua 5.4"
client='local d = require("amqp_delegate").delegator{url=os.getenv("AMQP_URL")}; d:start(); print(d:invoke("adder", 10, 15)); d:stop()'
echo "\$ lua5.4 -e '$client'"
set +e
result=$(timeout 60 lua5.4 -e "$client")
code=$?
set -e
echo "$result"
[ $code = 0 ] || die "the Lua delegator failed (status $code)"

section "stopping the worker (SIGTERM)"
kill -TERM "$worker_pid"
set +e
for _ in $(seq 1 100); do kill -0 "$worker_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$worker_pid" 2>/dev/null; then
    die "the worker did not exit within 10 s of SIGTERM"
fi
wait "$worker_pid"
wcode=$?
set -e
worker_pid=""
tail -n +"$((shown + 1))" "$worker_log" | sed 's/^/  worker | /'
echo "worker exited with status $wcode"

if [ "$result" = 25 ]; then
    echo
    echo "demo: ok (invoke(\"adder\", 10, 15) = $result)"
else
    die "expected 25, got: $result"
fi
[ $wcode = 0 ] || die "the worker exited with status $wcode after SIGTERM"
