#!/usr/bin/env bash
# The project's one test command:
#   bash scripts/test.sh [BUSTED ARGS...]     (extra args go to busted, e.g. --filter=PATTERN)
#
# 1. installs what is missing (scripts/install-deps.sh)
# 2. configures and builds with CMake into build/
# 3. runs the C unit tests (ctest), if any
# 4. starts a private RabbitMQ node in a fresh temp dir, and at the same time a private 3-node
#    cluster (scripts/cluster.sh) in another (both stopped and removed on exit)
# 5. runs the busted specs (spec/*_spec.lua) under Lua 5.4 with, in the environment:
#      AMQP_URL, AMQP_PORT, RABBITMQ_DIR (for `scripts/rabbitmq.sh ctl $RABBITMQ_DIR ...`),
#      AMQP_DELEGATE_BUILD (absolute build/), LUA_CPATH (build/ first), PATH (build/ first),
#      CLUSTER_URLS, CLUSTER_URL_1..3, CLUSTER_DIR_1..3, CLUSTER_ENV (the cluster's env file;
#      spec/helpers/cluster.lua), then stops the cluster
# 6. builds build-asan/ with -DAMQP_DELEGATE_SANITIZE=ON (ASan + UBSan), runs its ctest and the
#    specs again against it (scripts/instrumented-specs.sh asan; reports in build-asan/spec-logs)
# 7. runs the specs again with busted's lua5.4 and every host under valgrind memcheck
#    (scripts/instrumented-specs.sh valgrind; reports in build/valgrind-logs). With both on,
#    6 and 7 run side by side, valgrind against a second node of its own started during 5.
#    Stages 6 and 7 get no CLUSTER_* (the cluster is stopped by then): cluster specs are pending.
#    They leave out the installation and document specs (luarocks, packaging, readme), and
#    stage 7 the command-line parsing, crowd and long-task ones too: see not_instrumented.
#    SPECS="spec/a_spec.lua ..." chooses the files of both stages instead.
# 8. builds the libFuzzer targets in build-fuzz/ with clang and runs each for FUZZ_SECONDS
# Stages 6-8 run even when an earlier spec stage failed. Exits non-zero when busted failed or
# ran no test, or any later stage failed (a failed spec, a sanitizer or valgrind report, a
# fuzzer crash); prints the time of each stage.
#
# Knobs: BUSTED_TIMEOUT (seconds for each busted run, default 1800), BUILD_TYPE
# (default RelWithDebInfo), KEEP_BROKER=1 (leave the node and its dir for a post-mortem),
# SANITIZE=0, VALGRIND=0, FUZZ=0 (skip stage 6, 7, 8), FUZZ_SECONDS (default 30), CLUSTER=0
# (no 3-node cluster: its specs are pending).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
BUILD="$ROOT/build"
BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo}
BUSTED_TIMEOUT=${BUSTED_TIMEOUT:-1800}

# Every section is timed until the next one starts; the times are printed at the end.
stage_name="" stage_t0=$SECONDS stage_times=()
section() {
    [ -n "$stage_name" ] && stage_times+=("$(printf '%5ds  %s' $((SECONDS - stage_t0)) "$stage_name")")
    stage_name=$*
    stage_t0=$SECONDS
    [ $# -gt 0 ] && printf '\n==================== %s ====================\n' "$*"
    return 0
}
die() { echo "test.sh: error: $*" >&2; exit 1; }

t_start=$SECONDS

section "1/8 dependencies"
bash "$ROOT/scripts/install-deps.sh"
echo "dependencies ok"

section "2/8 build (CMake, $BUILD_TYPE)"
[ -f "$ROOT/CMakeLists.txt" ] || die "CMakeLists.txt not found in $ROOT: nothing to build"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" || die "cmake configure failed"
cmake --build "$BUILD" -j2 || die "build failed"

# The ASan and fuzz builds (stages 6 and 8) are made meanwhile, in the background at the
# lowest priority: stages 4 and 5 mostly wait on the broker, and the stages then find them
# built (they run cmake again, which only checks). A failure here is theirs to report.
prebuild_pid=""
prebuild() {
    if [ "${SANITIZE:-1}" = 1 ]; then
        cmake -S "$ROOT" -B "$ROOT/build-asan" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DAMQP_DELEGATE_SANITIZE=ON \
            && cmake --build "$ROOT/build-asan" -j2
    fi
    if [ "${FUZZ:-1}" = 1 ] && command -v clang >/dev/null; then
        CC=clang cmake -S "$ROOT" -B "$ROOT/build-fuzz" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" \
            -DAMQP_DELEGATE_FUZZ_SECONDS="${FUZZ_SECONDS:-30}" \
            && cmake --build "$ROOT/build-fuzz" -j2 --target fuzz_json fuzz_url
    fi
}
wait_prebuild() { # the background builds are done (or were stopped)
    [ -n "$prebuild_pid" ] || return 0
    wait "$prebuild_pid" 2>/dev/null || true
    prebuild_pid=""
}
if [ "${SANITIZE:-1}" = 1 ] || [ "${FUZZ:-1}" = 1 ]; then
    (renice -n 19 "$BASHPID" >/dev/null 2>&1; prebuild) >"$BUILD/prebuild.log" 2>&1 </dev/null &
    prebuild_pid=$!
fi

section "3/8 C unit tests (ctest)"
if [ -f "$BUILD/CTestTestfile.cmake" ]; then
    ctest --test-dir "$BUILD" --output-on-failure || die "C unit tests failed"
else
    echo "no CTest tests configured"
fi

section "4/8 private RabbitMQ node and 3-node cluster"
RABBITMQ_DIR=$(mktemp -d /tmp/amqp-delegate-test.XXXXXX)
cluster_dir=""      # the cluster's DIR, while it may have nodes
cluster_pid=""      # scripts/cluster.sh start, while it runs
# spec/helpers/broker.lua records the pid of every process it spawns here (each leads its own
# process group and carries this variable), so that an interrupted run leaves nothing behind
export AMQP_DELEGATE_PIDS="$RABBITMQ_DIR.pids"
# and makes its temp files here
export AMQP_DELEGATE_TMPDIR="$RABBITMQ_DIR.tmp"
mkdir -p "$AMQP_DELEGATE_TMPDIR"
busted_pid=""
log=""

stop_cluster() { # stops the cluster's nodes (also while it is still starting) and removes its dir
    [ -n "$cluster_dir" ] || return 0
    if [ -n "$cluster_pid" ] && kill -0 "$cluster_pid" 2>/dev/null; then
        kill -TERM -- "-$cluster_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$cluster_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$cluster_pid" 2>/dev/null || true
    fi
    cluster_pid=""
    bash "$ROOT/scripts/cluster.sh" stop "$cluster_dir" >/dev/null 2>&1 \
        || echo "test.sh: warning: could not stop the cluster in $cluster_dir" >&2
    rm -rf "$cluster_dir"
    cluster_dir=""
}

# The valgrind stage's own node, so that it runs beside the ASan stage (each stage restarts,
# alarms and closes connections of its node): started in the background during stage 5.
side_dir=""        # its RABBITMQ_DIR, while it may have a node
side_pid=""        # scripts/rabbitmq.sh start, while it runs
instrumented_pids=()
stop_side_node() {
    [ -n "$side_dir" ] || return 0
    [ -n "$side_pid" ] && wait "$side_pid" 2>/dev/null
    side_pid=""
    kill_spawned "$side_dir.pids"
    bash "$ROOT/scripts/rabbitmq.sh" stop "$side_dir" >/dev/null 2>&1 \
        || echo "test.sh: warning: could not stop the node in $side_dir" >&2
    rm -rf "$side_dir" "$side_dir.pids" "$side_dir.tmp" "$side_dir.start.log"
    side_dir=""
}

kill_spawned() { # [PIDS FILE]: the processes the specs left (default: $AMQP_DELEGATE_PIDS)
    local file=${1:-$AMQP_DELEGATE_PIDS}
    [ -f "$file" ] || return 0
    local pid pids=() sig
    while read -r pid; do
        [[ "$pid" =~ ^[0-9]+$ ]] || continue
        # only processes that still carry our marker (no pid reuse accidents)
        [ -r "/proc/$pid/environ" ] || continue
        { tr '\0' '\n' < "/proc/$pid/environ"; } 2>/dev/null \
            | grep -qxF "AMQP_DELEGATE_PIDS=$file" || continue
        pids+=("$pid")
    done < "$file"
    [ ${#pids[@]} -gt 0 ] || return 0
    echo "test.sh: stopping ${#pids[@]} process(es) left by the specs: ${pids[*]}" >&2
    for sig in TERM KILL; do
        for pid in "${pids[@]}"; do kill -"$sig" -- "-$pid" 2>/dev/null || kill -"$sig" "$pid" 2>/dev/null || true; done
        for _ in $(seq 1 30); do
            local alive=0
            for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            [ $alive = 0 ] && return 0
            sleep 0.1
        done
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$prebuild_pid" ]; then
        pkill -TERM -P "$prebuild_pid" 2>/dev/null || true
        kill -TERM "$prebuild_pid" 2>/dev/null || true
    fi
    local group
    for group in $busted_pid "${instrumented_pids[@]}"; do
        kill -0 "$group" 2>/dev/null || continue
        kill -TERM -- "-$group" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$group" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$group" 2>/dev/null || true
    done
    [ -n "$log" ] && rm -f "$log"
    if [ "${KEEP_BROKER:-0}" = 1 ]; then
        echo "test.sh: KEEP_BROKER=1: node left running in $RABBITMQ_DIR (stop: bash scripts/rabbitmq.sh stop $RABBITMQ_DIR)" >&2
        [ -n "$cluster_dir" ] && echo "test.sh: KEEP_BROKER=1: cluster left running in $cluster_dir (stop: bash scripts/cluster.sh stop $cluster_dir)" >&2
    else
        kill_spawned
        stop_cluster
        stop_side_node
        rm -f "$AMQP_DELEGATE_PIDS"
        rm -rf "$AMQP_DELEGATE_TMPDIR"
        if [ -d "$RABBITMQ_DIR" ]; then
            if [ -f "$RABBITMQ_DIR/env" ] || [ -f "$RABBITMQ_DIR/launcher.pid" ]; then
                bash "$ROOT/scripts/rabbitmq.sh" stop "$RABBITMQ_DIR" >/dev/null 2>&1 \
                    || echo "test.sh: warning: could not stop the node in $RABBITMQ_DIR" >&2
            fi
            rm -rf "$RABBITMQ_DIR"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "test.sh: interrupted" >&2; exit 130' INT
trap 'echo "test.sh: terminated" >&2; exit 143' TERM
t_broker=$SECONDS
if [ "${CLUSTER:-1}" = 1 ]; then
    # in the background, in its own process group (the cleanup can stop it), while the single
    # node starts: the cluster adds no time of its own to the run
    cluster_dir=$(mktemp -d /tmp/amqp-delegate-cluster.XXXXXX)
    setsid bash "$ROOT/scripts/cluster.sh" start "$cluster_dir" >/dev/null 2>"$cluster_dir/start.log" </dev/null &
    cluster_pid=$!
fi
bash "$ROOT/scripts/rabbitmq.sh" start "$RABBITMQ_DIR" >/dev/null || die "could not start RabbitMQ"
# shellcheck disable=SC1091
. "$RABBITMQ_DIR/env"
echo "RabbitMQ $RABBITMQ_NODENAME up at $AMQP_URL after $((SECONDS - t_broker))s"
if [ -n "$cluster_pid" ]; then
    if ! wait "$cluster_pid"; then
        cluster_pid=""
        cat "$cluster_dir/start.log" >&2
        die "could not start the 3-node RabbitMQ cluster (CLUSTER=0 runs without it)"
    fi
    cluster_pid=""
    # shellcheck disable=SC1091
    . "$cluster_dir/env"
    export CLUSTER_URLS CLUSTER_URL_1 CLUSTER_URL_2 CLUSTER_URL_3 CLUSTER_DIR_1 CLUSTER_DIR_2 CLUSTER_DIR_3 CLUSTER_ENV \
        CLUSTER_PORT_1 CLUSTER_PORT_2 CLUSTER_PORT_3 CLUSTER_NODE_1 CLUSTER_NODE_2 CLUSTER_NODE_3
    echo "RabbitMQ cluster up at $CLUSTER_URLS after $((SECONDS - t_broker))s"
else
    echo "no RabbitMQ cluster (CLUSTER=0): the cluster specs are pending"
fi

export AMQP_URL AMQP_PORT AMQPS_URL TLS_DIR RABBITMQ_DIR RABBITMQ_NODENAME
export AMQP_DELEGATE_BUILD="$BUILD"
# `run` waits a minute for an unreachable broker by default; the specs that point it at a
# dead port mean "fail now" (wait_for_broker_spec sets its own)
export AMQP_DELEGATE_WAIT_FOR_BROKER=0
export LUA_CPATH="$BUILD/?.so;;"
unset LUA_CPATH_5_4   # it would take precedence over LUA_CPATH in Lua 5.4
export PATH="$BUILD:$PATH"

section "5/8 specs (busted, Lua 5.4)"
if [ "${SANITIZE:-1}" = 1 ] && [ "${VALGRIND:-1}" = 1 ]; then
    side_dir=$(mktemp -d /tmp/amqp-delegate-test.XXXXXX)
    setsid bash "$ROOT/scripts/rabbitmq.sh" start "$side_dir" >"$side_dir.start.log" 2>&1 </dev/null &
    side_pid=$!
fi
log="$AMQP_DELEGATE_TMPDIR/busted.log"
# Busted runs in its own process group, in the background, so that INT/TERM reach our traps at
# once and the cleanup can stop it. (No --lua=lua5.4: we already run it under lua5.4, and that
# flag only makes busted re-exec itself through a shell.)
set +e
setsid bash -c 'timeout --foreground --kill-after=30 "$1" lua5.4 /usr/bin/busted -o gtest "${@:3}" spec \
        </dev/null 2>&1 | tee "$2"; exit "${PIPESTATUS[0]}"' \
    busted "$BUSTED_TIMEOUT" "$log" "$@" &
busted_pid=$!
wait "$busted_pid"
status=$?
busted_pid=""
set -e
[ "$status" = 124 ] && echo "test.sh: busted was stopped after ${BUSTED_TIMEOUT}s (BUSTED_TIMEOUT)" >&2

count() { # regexp -> first number of the first matching line, or 0
    local n
    n=$(grep -E -m1 "$1" "$log" | grep -oE '[0-9]+' | head -n1 || true)
    echo "${n:-0}"
}
passed=$(count '^\[  PASSED  \] [0-9]+ test')
failed=$(count '^\[  FAILED  \] [0-9]+ test')
errors=$(count '^\[  ERROR   \] [0-9]+ error')
skipped=$(count '^\[ SKIPPED  \] [0-9]+ test')

if [ "$status" = 0 ] && [ $((passed + failed + errors)) = 0 ]; then
    echo "test.sh: busted ran no test" >&2
    status=1
fi
# busted failed without a count of failures (crash, timeout, a spec file that does not load)
[ "$status" != 0 ] && [ $((failed + errors)) = 0 ] && errors=1

# The cluster is for stage 5 only: the ASan and valgrind stages run without it (their CLUSTER_*
# are unset, so the cluster specs are pending there). Under valgrind every wait is stretched
# 8 times while a node failover is timed by the broker, not by us; and three idle nodes hold
# 600 MB and some CPU the instrumented runs can use.
unset CLUSTER_URLS CLUSTER_URL_1 CLUSTER_URL_2 CLUSTER_URL_3 CLUSTER_DIR_1 CLUSTER_DIR_2 CLUSTER_DIR_3 CLUSTER_ENV \
    CLUSTER_PORT_1 CLUSTER_PORT_2 CLUSTER_PORT_3 CLUSTER_NODE_1 CLUSTER_NODE_2 CLUSTER_NODE_3
if [ -n "$cluster_dir" ] && [ "${KEEP_BROKER:-0}" != 1 ]; then
    stop_cluster
fi

# ---- stages 6-8 (issue 3, points 10 and 11)
later=()   # one "stage: result" line each
overall=$status
stage_failed() { later+=("$1: FAILED${2:+ ($2)}"); overall=1; }

# The instrumented stages rerun the specs that drive the C code, not those that check the
# installation and the documents (the same binaries, built and installed: stage 5 runs them),
# and valgrind (8-10x slower than ASan) leaves to ASan+UBSan the command-line parsing specs,
# those made of volume or CPU-bound Lua (a crowd of calls, 30 s tasks) and the metrics server's
# (an HTTP client per scrape): that keeps the whole run near 19 minutes here.
not_instrumented="luarocks_spec packaging_spec readme_spec"
not_under_valgrind="cli_spec exit_status_spec shell_spec crowd_spec long_tasks_spec metrics_spec"
specs_but() { # NAMES... -> the spec files without those (spec/NAME.lua)
    local file name keep list=()
    for file in "$ROOT"/spec/*_spec.lua; do
        keep=1
        for name in "$@"; do [ "$(basename "$file" .lua)" = "$name" ] && keep=0; done
        [ "$keep" = 1 ] && list+=("spec/$(basename "$file")")
    done
    echo "${list[*]}"
}

instrumented() { # MODE BUILD_DIR LOG_DIR [BUSTED ARGS...]: the specs under ASan or valgrind
    local mode=$1 logs=$3 rc
    kill_spawned   # nothing left over from the previous run of the specs
    set +e
    SPECS="${SPECS:-}" setsid bash "$ROOT/scripts/instrumented-specs.sh" "$@" </dev/null &
    busted_pid=$!
    wait "$busted_pid"
    rc=$?
    busted_pid=""
    set -e
    if [ "$rc" = 0 ]; then later+=("$(cat "$logs/summary")"); else stage_failed "$mode" "$(cat "$logs/summary" 2>/dev/null || echo "exit $rc")"; fi
}

# MODE BUILD_DIR LOG_DIR NODE_DIR [BUSTED ARGS...]: starts the specs under ASan or valgrind in
# the background against the node of NODE_DIR (its env, its own pids and temp files), with
# their output in LOG_DIR.out; the run's process group goes into instrumented_pids.
start_instrumented() {
    local mode=$1 build=$2 logs=$3 node=$4
    shift 4
    (
        set -a
        # shellcheck disable=SC1091
        . "$node/env"
        set +a
        export AMQP_DELEGATE_PIDS="$node.pids" AMQP_DELEGATE_TMPDIR="$node.tmp"
        mkdir -p "$AMQP_DELEGATE_TMPDIR"
        exec setsid bash "$ROOT/scripts/instrumented-specs.sh" "$mode" "$build" "$logs" "$@"
    ) >"$logs.out" 2>&1 </dev/null &
    instrumented_pids+=($!)
}
finish_instrumented() { # MODE LOG_DIR PID: waits for that run, prints its output, records it
    local mode=$1 logs=$2 pid=$3 rc
    set +e
    wait "$pid"
    rc=$?
    set -e
    echo "-------------------- $mode (output of the run) --------------------"
    cat "$logs.out"
    if [ "$rc" = 0 ]; then later+=("$(cat "$logs/summary")"); else stage_failed "$mode" "$(cat "$logs/summary" 2>/dev/null || echo "exit $rc")"; fi
}

asan_ready=0
if [ "${SANITIZE:-1}" = 1 ]; then
    section "6/8 AddressSanitizer + UBSan (build-asan)"
    wait_prebuild
    if cmake -S "$ROOT" -B "$ROOT/build-asan" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DAMQP_DELEGATE_SANITIZE=ON >/dev/null \
        && cmake --build "$ROOT/build-asan" -j2 >/dev/null; then
        if ASAN_OPTIONS=detect_leaks=1 ctest --test-dir "$ROOT/build-asan" -LE fuzz --output-on-failure; then
            asan_ready=1
        else
            stage_failed "asan" "ctest under ASan"
        fi
    else
        stage_failed "asan" "build-asan does not build"
    fi
fi
side_ready=0
if [ -n "$side_pid" ]; then
    if wait "$side_pid"; then side_ready=1; else cat "$side_dir.start.log" >&2; fi
    side_pid=""
fi
asan_specs=${SPECS:-$(specs_but $not_instrumented)}
valgrind_specs=${SPECS:-$(specs_but $not_instrumented $not_under_valgrind)}

if [ "$asan_ready" = 1 ] && [ "${VALGRIND:-1}" = 1 ] && [ "$side_ready" = 1 ]; then
    # Side by side, each on its own node: the specs mostly wait on the broker, so the two
    # runs take little more than valgrind's alone (about 5 minutes less than one after the other).
    section "6-7/8 AddressSanitizer + UBSan and valgrind memcheck, side by side"
    kill_spawned   # nothing left over from stage 5
    rm -rf "$ROOT/build-asan/spec-logs" "$BUILD/valgrind-logs"
    SPECS=$asan_specs start_instrumented asan "$ROOT/build-asan" "$ROOT/build-asan/spec-logs" "$RABBITMQ_DIR" "$@"
    asan_pid=${instrumented_pids[-1]}
    SPECS=$valgrind_specs start_instrumented valgrind "$BUILD" "$BUILD/valgrind-logs" "$side_dir" "$@"
    valgrind_pid=${instrumented_pids[-1]}
    finish_instrumented asan "$ROOT/build-asan/spec-logs" "$asan_pid"
    finish_instrumented valgrind "$BUILD/valgrind-logs" "$valgrind_pid"
    instrumented_pids=()
else
    [ "$asan_ready" = 1 ] && SPECS=$asan_specs instrumented asan "$ROOT/build-asan" "$ROOT/build-asan/spec-logs" "$@"
    if [ "${VALGRIND:-1}" = 1 ]; then
        section "7/8 valgrind memcheck (build)"
        SPECS=$valgrind_specs instrumented valgrind "$BUILD" "$BUILD/valgrind-logs" "$@"
    fi
fi
stop_side_node

if [ "${FUZZ:-1}" = 1 ]; then
    section "8/8 fuzzing (libFuzzer, ${FUZZ_SECONDS:-30}s per target, build-fuzz)"
    wait_prebuild
    if ! command -v clang >/dev/null; then
        stage_failed "fuzz" "clang not found"
    elif CC=clang cmake -S "$ROOT" -B "$ROOT/build-fuzz" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" \
            -DAMQP_DELEGATE_FUZZ_SECONDS="${FUZZ_SECONDS:-30}" >/dev/null \
        && cmake --build "$ROOT/build-fuzz" -j2 --target fuzz_json fuzz_url >/dev/null; then
        if ctest --test-dir "$ROOT/build-fuzz" -L fuzz -j2 --output-on-failure; then
            later+=("fuzz: $(grep -ohE 'Done [0-9]+ runs in [0-9]+ second' "$ROOT/build-fuzz/Testing/Temporary/LastTest.log" \
                | sed -E 's/Done ([0-9]+) runs in ([0-9]+) second/\1 runs in \2 s/' | paste -sd, - | sed 's/,/, /g'), no crash")
        else
            stage_failed "fuzz" "a fuzzer crashed: reproducer in build-fuzz/fuzz-artifacts/"
        fi
    else
        stage_failed "fuzz" "build-fuzz does not build"
    fi
fi
section

echo
echo "stage times:"
printf '%s\n' "${stage_times[@]}"
echo "total time $((SECONDS - t_start))s"
printf '%s\n' "${later[@]}"
echo "busted: $passed passed, $((failed + errors)) failed, $skipped skipped"
exit "$overall"
