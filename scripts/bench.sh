#!/usr/bin/env bash
# The benchmark (issue 4, point 4):  bash scripts/bench.sh
#
# Starts a private RabbitMQ node (scripts/rabbitmq.sh, stopped on exit), builds what it needs,
# and measures side by side, against that one broker:
#   (a)  ours: the Lua delegator (bench/lua_bench.lua) calling a host process
#        (build/amqp-delegate run bench/adder_worker.lua)
#   (b)  Node: amqplib peers that do what the Node library does (bench/node_bench.js): a queue and
#        a consumer per call, prefetch 1 worker; as shipped (Nagle on) and with TCP_NODELAY
#   (c)  bare rabbitmq-c in C (bench/bare_roundtrip.c): no Lua, no JSON, one reply queue
# the figures: sequential calls/s, p50, p99; pipelined calls/s with DEPTH in flight; the 10 ms
# slow adder with DEPTH in flight at worker concurrency 1 and DEPTH; the worker process's RSS
# idle, under load and after BENCH_RSS_CALLS calls. Prints a table with the ratios (a)/(b) and
# (a)/(c) and writes it, with the command, date and machine, to bench/RESULTS.md.
# A/B rows on that node: (a) with publisher confirms off (BENCH_CONFIRMS=0 given to
# bench/adder_worker.lua and bench/lua_bench.lua: `confirms = false` on both sides) against (a) as
# shipped; the keepalive count hook's cost: a task summing 1..N (bench/spin_worker.lua) on a host
# as shipped and on one with AMQP_DELEGATE_KEEPALIVE=0 (bench/keepalive_bench.lua).
#
# Knobs (environment):
#   BENCH_CALLS=2000            sequential calls measured (ours, bare C)
#   BENCH_WARMUP=200            warm-up calls before every measurement (Node as shipped: 10)
#   BENCH_NODE_CALLS=100        sequential calls, Node as shipped (~23 calls/s)
#   BENCH_NODE_NODELAY_CALLS=1000  sequential calls, Node with TCP_NODELAY
#   BENCH_PIPE_CALLS=20000      pipelined calls (ours, bare C)
#   BENCH_NODE_PIPE_CALLS=3000  pipelined calls, both Node variants
#   BENCH_DEPTH=64              calls in flight when pipelined; worker concurrency/prefetch
#   BENCH_SLOW_CALLS=3000       slow adder calls at concurrency DEPTH
#   BENCH_SLOW1_CALLS=200       slow adder calls at concurrency 1 (and Node's prefetch 1)
#   BENCH_SLOW_MS=10            the slow adder's sleep
#   BENCH_RSS_CALLS=100000      pipelined calls between the warm and the final RSS reading
#   BENCH_MAX_SECONDS=15        cap on one measurement: no new call after that (Node mostly)
#   BENCH_REPEAT=5              (a) and (c) sequential and pipelined runs alternate this many
#                               times; the table shows the medians
#   BENCH_KEEPALIVE_RUNS=5      keepalive A/B: calls of the spin task on each host (median)
#   BENCH_KEEPALIVE_N=50000000  keepalive A/B: loop iterations per call
#   BENCH_AMQP_URL=amqp://...   use that broker instead of starting one
#   BENCH_SKIP_BUILD=1          do not run cmake (the build dir must hold the binaries)
#   BENCH_TMPDIR=/tmp           where the temp dir (logs, broker) is made
#   BUILD_DIR=build  BUILD_TYPE=RelWithDebInfo  BENCH_RESULTS=bench/RESULTS.md
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
COMMAND_LINE="bash scripts/bench.sh${*:+ $*}"
BENCH_ENV=$(env | grep -E '^(BENCH_|BUILD_DIR=|BUILD_TYPE=)' | sort | tr '\n' ' ' | sed 's/ $//' || true)

CALLS=${BENCH_CALLS:-2000}
WARMUP=${BENCH_WARMUP:-200}
NODE_CALLS=${BENCH_NODE_CALLS:-100}
NODE_NODELAY_CALLS=${BENCH_NODE_NODELAY_CALLS:-1000}
PIPE_CALLS=${BENCH_PIPE_CALLS:-20000}
NODE_PIPE_CALLS=${BENCH_NODE_PIPE_CALLS:-3000}
DEPTH=${BENCH_DEPTH:-64}
SLOW_CALLS=${BENCH_SLOW_CALLS:-3000}
SLOW1_CALLS=${BENCH_SLOW1_CALLS:-200}
SLOW_MS=${BENCH_SLOW_MS:-10}
RSS_CALLS=${BENCH_RSS_CALLS:-100000}
MAX_SECONDS=${BENCH_MAX_SECONDS:-15}
KEEPALIVE_RUNS=${BENCH_KEEPALIVE_RUNS:-5}
KEEPALIVE_N=${BENCH_KEEPALIVE_N:-50000000}
BUILD=${BUILD_DIR:-$ROOT/build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo}
RESULTS=${BENCH_RESULTS:-$ROOT/bench/RESULTS.md}

log() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ cleanup
PIDS=()          # every background process we started (and only those)
BROKER_DIR=""
TMP_PARENT=${BENCH_TMPDIR:-/tmp}
mkdir -p "$TMP_PARENT"
WORK=$(mktemp -d "$TMP_PARENT/amqp-delegate-bench.XXXXXX")
chmod 755 "$WORK"

stop_pid() { # pid: TERM, wait up to 5 s, then KILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [ -n "$BROKER_DIR" ]; then
        bash "$ROOT/scripts/rabbitmq.sh" stop "$BROKER_DIR" >/dev/null 2>&1 || true
    fi
    if [ $status -eq 0 ]; then rm -rf "$WORK"; else log "logs kept in $WORK"; fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ build
bash "$ROOT/scripts/install-deps.sh" >&2
command -v node >/dev/null || die "node not found"
command -v gcc >/dev/null || die "gcc not found"
NODE_PATH_DIR=$ROOT/spec/node/node_modules
if ! (cd "$ROOT/bench" && NODE_PATH=$NODE_PATH_DIR node -e 'require("amqplib")') 2>/dev/null; then
    log "installing amqplib for the Node peers (spec/node)"
    (cd "$ROOT/spec/node" && npm install --no-audit --no-fund >&2) || die "npm install failed"
fi

if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
    log "building ($BUILD, $BUILD_TYPE)"
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" >&2 || die "cmake configure failed"
    cmake --build "$BUILD" -j2 >&2 || die "build failed"
fi
[ -x "$BUILD/amqp-delegate" ] || die "$BUILD/amqp-delegate not built"
[ -f "$BUILD/amqp_delegate.so" ] || die "$BUILD/amqp_delegate.so not built"
mkdir -p "$BUILD/bench"
gcc -O2 -g -Wall -Wextra -std=c11 -o "$BUILD/bench/bare_roundtrip" "$ROOT/bench/bare_roundtrip.c" \
    -lrabbitmq || die "cannot build bench/bare_roundtrip.c"
gcc -O2 -g -Wall -Wextra -std=c11 -shared -fPIC -I/usr/include/lua5.4 \
    -o "$BUILD/bench/bench_clock.so" "$ROOT/bench/bench_clock.c" || die "cannot build bench/bench_clock.c"
HOST=$BUILD/amqp-delegate
BARE=$BUILD/bench/bare_roundtrip
export LUA_CPATH="$BUILD/?.so;$BUILD/bench/?.so;;"
export NODE_PATH=$NODE_PATH_DIR

# ------------------------------------------------------------------ broker
if [ -n "${BENCH_AMQP_URL:-}" ]; then
    URL=$BENCH_AMQP_URL
else
    BROKER_DIR=$WORK/rabbitmq
    mkdir -p "$BROKER_DIR"
    log "starting a private RabbitMQ node"
    bash "$ROOT/scripts/rabbitmq.sh" start "$BROKER_DIR" >/dev/null || die "RabbitMQ did not start"
    # shellcheck disable=SC1091
    URL=$(. "$BROKER_DIR/env" && echo "$AMQP_URL")
fi
log "broker: $URL"

# ------------------------------------------------------------------ helpers
declare -A R     # R[peer.metric] = value

start_worker() { # label cmd... -> sets WPID once the worker printed "ready"
    local label=$1; shift
    local out=$WORK/$label.out
    "$@" > "$out" 2> "$WORK/$label.err" < /dev/null &
    WPID=$!
    PIDS+=("$WPID")
    local i
    for i in $(seq 1 300); do
        grep -q '^ready' "$out" 2>/dev/null && return 0
        kill -0 "$WPID" 2>/dev/null || { cat "$WORK/$label.err" >&2; die "$label exited before ready"; }
        sleep 0.1
    done
    die "$label not ready after 30 s"
}

stop_worker() { stop_pid "$WPID"; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo ""; }

SAMPLER=""
SAMPLES=0
start_sampler() { # pid: records the peak VmRSS of pid until stop_sampler
    local pid=$1
    SAMPLES=$((SAMPLES + 1))
    local peak_file=$WORK/peak.$SAMPLES stop_file=$WORK/stop.$SAMPLES
    echo 0 > "$peak_file"
    (
        peak=0
        while kill -0 "$pid" 2>/dev/null && [ ! -e "$stop_file" ]; do
            v=0   # read with builtins only: no process forked while a measurement runs
            while read -r k n _; do
                if [ "$k" = VmRSS: ]; then v=$n; break; fi
            done < "/proc/$pid/status" 2>/dev/null || true
            if [ "$v" -gt "$peak" ]; then peak=$v; echo "$peak" > "$peak_file"; fi
            sleep 0.1
        done
    ) &
    SAMPLER=$!
    PIDS+=("$SAMPLER")
}
stop_sampler() { # -> sets PEAK (not in a $(...): it must wait for its own child)
    touch "$WORK/stop.$SAMPLES"
    wait "$SAMPLER" 2>/dev/null || true
    PEAK=$(cat "$WORK/peak.$SAMPLES")
}

measure() { # peer.prefix label cmd...: runs a client, stores its RESULT lines as R[peer.prefix_key]
    local key=$1 label=$2; shift 2
    local out=$WORK/$label.out
    log "$label"
    # in the background, so that a signal to this script is handled at once (the trap), not
    # after the client finished; cleanup stops it then
    timeout --kill-after=5 $((MAX_SECONDS * 4 + 120)) "$@" > "$out" 2> "$WORK/$label.err" < /dev/null &
    local client=$!
    PIDS+=("$client")
    if ! wait "$client"; then
        log "$label failed (see below); its figures are n/a"
        tail -n 5 "$WORK/$label.err" >&2
        return 0
    fi
    local k v
    while read -r _ k v; do R[$key"_"$k]=$v; done < <(grep '^RESULT ' "$out")
    if grep -q '^RESULT cps' "$out"; then log "$label: $(grep '^RESULT cps' "$out" | awk '{print $3}') calls/s"; fi
}

cpu_ticks() { # pid -> utime + stime of the process, in clock ticks
    sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}'
}
TICK=$(getconf CLK_TCK)
cpu_us_per_call() { # ticks_before ticks_after calls -> microseconds of CPU per call
    awk -v a="$1" -v b="$2" -v n="$3" -v t="$TICK" 'BEGIN {if (n > 0) printf "%.2f", (b - a) / t * 1e6 / n}'
}
nonempty() { printf '%s\n' "$@" | { grep -v '^$' || true; }; }   # (no value: no line, status 0)
median() { # values... -> the median (the lower one of the middle two); nothing when none
    nonempty "$@" | sort -g | awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]}'
}
max_of() { nonempty "$@" | sort -g | tail -n 1; }
min_of() { nonempty "$@" | sort -g | head -n 1; }

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
t0=$SECONDS

# ------------------------------------------------------------------ (a) ours and (c) bare C, interleaved
# Both workers run side by side (the one not measured sits idle in poll); the measurements of (a)
# and (c) alternate, BENCH_REPEAT times each, and the table shows the median: on a shared
# machine the load changes from one second to the next, and this keeps the ratio (a)/(c) fair.
# A third host, (a) with publisher confirms off on both sides (peer "an", the A/B row), takes its
# turn in the same rounds.
REPEAT=${BENCH_REPEAT:-5}
LUA_BENCH=(lua5.4 "$ROOT/bench/lua_bench.lua")
QC=bench_bare_adder
QA=bench_lua_adder
QAN=bench_lua_adder_noconfirms
start_worker bare_worker "$BARE" worker "$URL" $QC "$DEPTH"
CPID=$WPID
BENCH_WORKER_NAME=$QA BENCH_DELAY_MS=0 start_worker lua_worker "$HOST" run --url "$URL" \
    --concurrency "$DEPTH" --log-level warn "$ROOT/bench/adder_worker.lua"
APID=$WPID
BENCH_CONFIRMS=0 BENCH_WORKER_NAME=$QAN BENCH_DELAY_MS=0 start_worker lua_worker_noconfirms "$HOST" run \
    --url "$URL" --concurrency "$DEPTH" --log-level warn "$ROOT/bench/adder_worker.lua"
ANPID=$WPID
sleep 0.5
R[c.rss_idle]=$(rss_kib "$CPID")
R[a.rss_idle]=$(rss_kib "$APID")
for r in $(seq 1 "$REPEAT"); do
    measure "c.seq@$r" "bare_seq$r" "$BARE" client "$URL" $QC seq "$CALLS" "$WARMUP" 1 "$MAX_SECONDS"
    measure "a.seq@$r" "lua_seq$r" "${LUA_BENCH[@]}" "$URL" $QA seq "$CALLS" "$WARMUP" 1 "$MAX_SECONDS"
    BENCH_CONFIRMS=0 measure "an.seq@$r" "lua_noconfirms_seq$r" "${LUA_BENCH[@]}" "$URL" $QAN seq "$CALLS" \
        "$WARMUP" 1 "$MAX_SECONDS"
done
peaks_a=(); peaks_c=()
for r in $(seq 1 "$REPEAT"); do
    start_sampler "$CPID"
    measure "c.pipe@$r" "bare_pipe$r" "$BARE" client "$URL" $QC pipe "$PIPE_CALLS" "$WARMUP" "$DEPTH" "$MAX_SECONDS"
    stop_sampler
    peaks_c+=("$PEAK")
    start_sampler "$APID"
    measure "a.pipe@$r" "lua_pipe$r" "${LUA_BENCH[@]}" "$URL" $QA pipe "$PIPE_CALLS" "$WARMUP" "$DEPTH" "$MAX_SECONDS"
    stop_sampler
    peaks_a+=("$PEAK")
    BENCH_CONFIRMS=0 measure "an.pipe@$r" "lua_noconfirms_pipe$r" "${LUA_BENCH[@]}" "$URL" $QAN pipe \
        "$PIPE_CALLS" "$WARMUP" "$DEPTH" "$MAX_SECONDS"
done
stop_pid "$ANPID"
R[c.rss_load]=$(max_of "${peaks_c[@]}")
R[a.rss_load]=$(max_of "${peaks_a[@]}")
for p in a an c; do
    for m in seq pipe; do
        for k in calls cps cpu_us p50_ms p99_ms; do
            vals=()
            for r in $(seq 1 "$REPEAT"); do vals+=("${R[$p.$m@${r}_$k]:-}"); done
            R[$p.${m}_$k]=$(median "${vals[@]}")
        done
    done
done
R[c.rss_warm]=$(rss_kib "$CPID")
R[a.rss_warm]=$(rss_kib "$APID")
# RSS_CALLS more calls on each; the worker's CPU time over them gives its CPU per call
for p in c a; do
    if [ $p = c ]; then pid=$CPID; else pid=$APID; fi
    before=$(cpu_ticks "$pid")
    if [ $p = c ]; then
        measure c.rss bare_rss "$BARE" client "$URL" $QC pipe "$RSS_CALLS" 0 "$DEPTH" $((MAX_SECONDS * 4))
    else
        measure a.rss lua_rss "${LUA_BENCH[@]}" "$URL" $QA pipe "$RSS_CALLS" 0 "$DEPTH" $((MAX_SECONDS * 4))
    fi
    after=$(cpu_ticks "$pid")
    R[$p.wcpu_us]=$(cpu_us_per_call "$before" "$after" "${R[$p.rss_calls]:-0}")
    sleep 0.5
    R[$p.rss_after]=$(rss_kib "$pid")
done
stop_pid "$CPID"
stop_pid "$APID"

# the slow adder: sleeps SLOW_MS, then adds; DEPTH calls in flight; worker concurrency 1, then DEPTH
for conc in 1 "$DEPTH"; do
    n=$SLOW_CALLS; [ "$conc" = 1 ] && n=$SLOW1_CALLS
    warm=$((WARMUP < n / 4 ? WARMUP : n / 4))
    start_worker "bare_slow_worker$conc" "$BARE" worker "$URL" "bench_bare_slow$conc" "$conc" "$SLOW_MS"
    measure "c.slow$conc" "bare_slow$conc" "$BARE" client "$URL" "bench_bare_slow$conc" pipe "$n" \
        "$warm" "$DEPTH" "$MAX_SECONDS"
    stop_worker
    BENCH_WORKER_NAME=bench_lua_slow$conc BENCH_DELAY_MS=$SLOW_MS start_worker "lua_slow_worker$conc" \
        "$HOST" run --url "$URL" --concurrency "$conc" --log-level warn "$ROOT/bench/adder_worker.lua"
    measure "a.slow$conc" "lua_slow$conc" "${LUA_BENCH[@]}" "$URL" "bench_lua_slow$conc" pipe "$n" \
        "$warm" "$DEPTH" "$MAX_SECONDS"
    stop_worker
done

# ------------------------------------------------------------------ A/B: the keepalive count hook
# Two hosts serve bench/spin_worker.lua (a task that sums 1..N): one as shipped (the count hook
# reads the clock every 10 000 instructions), one with AMQP_DELEGATE_KEEPALIVE=0 (no hook);
# bench/keepalive_bench.lua calls them in turns, KEEPALIVE_RUNS times each, and prints the median
# time per loop iteration on each (the task's own CPU time and wall time).
BENCH_WORKER_NAME=bench_spin_on start_worker spin_on "$HOST" run --url "$URL" --log-level warn \
    "$ROOT/bench/spin_worker.lua"
SPIN_ON=$WPID
AMQP_DELEGATE_KEEPALIVE=0 BENCH_WORKER_NAME=bench_spin_off start_worker spin_off "$HOST" run --url "$URL" \
    --log-level warn "$ROOT/bench/spin_worker.lua"
SPIN_OFF=$WPID
measure ka keepalive lua5.4 "$ROOT/bench/keepalive_bench.lua" "$URL" bench_spin_on bench_spin_off \
    "$KEEPALIVE_RUNS" "$KEEPALIVE_N"
stop_pid "$SPIN_ON"
stop_pid "$SPIN_OFF"

# ------------------------------------------------------------------ (b) Node, as shipped and nodelay
NODE_BENCH=(node "$ROOT/bench/node_bench.js")
for variant in b bn; do
    flag=(); label=node; seq_calls=$NODE_CALLS; warm=10
    if [ $variant = bn ]; then flag=(--nodelay); label=node_nodelay; seq_calls=$NODE_NODELAY_CALLS; warm=50; fi
    q=bench_${label}_adder
    start_worker "${label}_worker" "${NODE_BENCH[@]}" worker "$URL" "$q" "${flag[@]}"
    sleep 0.5
    R[$variant.rss_idle]=$(rss_kib "$WPID")
    measure "$variant.seq" "${label}_seq" "${NODE_BENCH[@]}" delegator "$URL" "$q" seq "$seq_calls" "$warm" 1 \
        --max-seconds "$MAX_SECONDS" "${flag[@]}"
    start_sampler "$WPID"
    before=$(cpu_ticks "$WPID")
    measure "$variant.pipe" "${label}_pipe" "${NODE_BENCH[@]}" delegator "$URL" "$q" pipe "$NODE_PIPE_CALLS" \
        "$warm" "$DEPTH" --max-seconds "$MAX_SECONDS" "${flag[@]}"
    after=$(cpu_ticks "$WPID")
    stop_sampler
    R[$variant.rss_load]=$PEAK
    # over the warm-up calls too: they cannot be told apart from outside
    R[$variant.wcpu_us]=$(cpu_us_per_call "$before" "$after" $(( ${R[$variant.pipe_calls]:-0} + warm )))
    R[$variant.rss_warm]=$(rss_kib "$WPID")
    stop_worker
    q=bench_${label}_slow
    start_worker "${label}_slow_worker" "${NODE_BENCH[@]}" worker "$URL" "$q" --delay-ms "$SLOW_MS" "${flag[@]}"
    measure "$variant.slow1" "${label}_slow1" "${NODE_BENCH[@]}" delegator "$URL" "$q" pipe "$SLOW1_CALLS" \
        "$warm" "$DEPTH" --max-seconds "$MAX_SECONDS" "${flag[@]}"
    stop_worker
done
elapsed=$((SECONDS - t0))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)


# ------------------------------------------------------------------ report
N=$DEPTH
for p in a b bn c; do R[$p.slowN_cps]=${R[$p.slow${N}_cps]:-}; done

num() { # value format -> formatted, or n/a
    [ -n "${1:-}" ] && awk -v v="$1" -v f="$2" 'BEGIN {printf f, v}' || printf 'n/a'
}
ratio() { # a b -> a/b with 2 decimals, or n/a
    if [ -n "${1:-}" ] && [ -n "${2:-}" ] && awk -v b="$2" 'BEGIN {exit !(b > 0)}'; then
        awk -v a="$1" -v b="$2" 'BEGIN {r = a / b; printf (r >= 100 ? "%.0f" : (r >= 10 ? "%.1f" : (r >= 0.1 ? "%.2f" : "%.3f"))), r}'
    else
        printf 'n/a'
    fi
}
ratio3() { # a b -> a/b with 3 decimals (for ratios near 1), or n/a
    if [ -n "${1:-}" ] && [ -n "${2:-}" ] && awk -v b="$2" 'BEGIN {exit !(b > 0)}'; then
        awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'
    else
        printf 'n/a'
    fi
}
mib() { [ -n "${1:-}" ] && awk -v v="$1" 'BEGIN {printf "%.1f MiB", v / 1024}' || printf 'n/a'; }
check() { # expr with a, b -> pass/MISSED/n/a
    if [ -z "${2:-}" ] || [ -z "${3:-}" ]; then printf 'n/a'; return; fi
    awk -v a="$2" -v b="$3" "BEGIN {exit !($1)}" && printf 'met' || printf '**MISSED**'
}

row() { # metric fmt key [unit]
    local metric=$1 fmt=$2 key=$3
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$metric" \
        "$(num "${R[a.$key]:-}" "$fmt")" "$(num "${R[b.$key]:-}" "$fmt")" "$(num "${R[bn.$key]:-}" "$fmt")" \
        "$(num "${R[c.$key]:-}" "$fmt")" \
        "$(ratio "${R[a.$key]:-}" "${R[b.$key]:-}")" "$(ratio "${R[a.$key]:-}" "${R[bn.$key]:-}")" \
        "$(ratio "${R[a.$key]:-}" "${R[c.$key]:-}")"
}
rss_row() {
    local metric=$1 key=$2
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$metric" \
        "$(mib "${R[a.$key]:-}")" "$(mib "${R[b.$key]:-}")" "$(mib "${R[bn.$key]:-}")" "$(mib "${R[c.$key]:-}")" \
        "$(ratio "${R[a.$key]:-}" "${R[b.$key]:-}")" "$(ratio "${R[a.$key]:-}" "${R[bn.$key]:-}")" \
        "$(ratio "${R[a.$key]:-}" "${R[c.$key]:-}")"
}
growth() { # peer -> KiB grown from warm to after
    [ -n "${R[$1.rss_warm]:-}" ] && [ -n "${R[$1.rss_after]:-}" ] && echo $(( R[$1.rss_after] - R[$1.rss_warm] )) || true
}
R[a.rss_growth]=$(growth a)
R[c.rss_growth]=$(growth c)
R[a.slow_gain]=$( [ -n "${R[a.slow1_cps]:-}" ] && [ -n "${R[a.slowN_cps]:-}" ] && ratio "${R[a.slowN_cps]}" "${R[a.slow1_cps]}" || true)
R[c.slow_gain]=$( [ -n "${R[c.slow1_cps]:-}" ] && [ -n "${R[c.slowN_cps]:-}" ] && ratio "${R[c.slowN_cps]}" "${R[c.slow1_cps]}" || true)
[ "${R[a.slow_gain]:-}" = n/a ] && R[a.slow_gain]=""
[ "${R[c.slow_gain]:-}" = n/a ] && R[c.slow_gain]=""

cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
rmq=$(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo '?')
rmqc=$(dpkg-query -W -f '${Version}' librabbitmq-dev 2>/dev/null || echo '?')
amqplib=$(node -e 'console.log(require("amqplib/package.json").version)' 2>/dev/null || echo '?')

report() {
    cat <<EOF
# Benchmark results

Produced by \`$COMMAND_LINE\`${BENCH_ENV:+ with \`$BENCH_ENV\`} on $(date -u '+%Y-%m-%d %H:%M UTC') in ${elapsed} s of measurement.
Load average (1, 5, 15 min) before: $LOAD_BEFORE, after: $LOAD_AFTER.
Machine: $(nproc) CPUs ($cpu), $mem RAM, $(uname -sr); broker on the same machine (loopback).
RabbitMQ $rmq, rabbitmq-c $rmqc, Lua $(lua5.4 -v 2>&1 | awk '{print $2}'), Node $(node --version), amqplib $amqplib.

Peers: **(a)** ours: \`lua_bench.lua\` (Lua delegator) → \`amqp-delegate run\` (host, concurrency $DEPTH);
**(b)** Node as the Node library ships it (queue + consumer per call, prefetch 1 worker, Nagle on);
**(b')** the same with \`{noDelay: true}\` on amqplib's connect (TCP_NODELAY);
**(c)** bare rabbitmq-c in C, no Lua, no JSON, one reply queue, TCP_NODELAY, prefetch $DEPTH.
(a) and (c): medians of $REPEAT alternating runs of the sequential and pipelined figures.
Sequential: $CALLS calls (Node: $NODE_CALLS as shipped, $NODE_NODELAY_CALLS with nodelay) after a warm-up;
pipelined: $PIPE_CALLS calls (Node: up to $NODE_PIPE_CALLS), $DEPTH in flight; slow adder: sleeps $SLOW_MS ms,
$DEPTH in flight, $SLOW_CALLS calls at concurrency $DEPTH, $SLOW1_CALLS at concurrency 1. A measurement stops
sending after ${MAX_SECONDS} s. RSS is the worker process's VmRSS: idle after ready, peak during the pipelined
run, after that run (warm), and after $RSS_CALLS more pipelined calls. CPU per call: the delegator's own
(getrusage / os.clock / process.cpuUsage over the measured calls) and the worker's (/proc/PID/stat over
the $RSS_CALLS calls; Node: over its pipelined run).

| metric | (a) ours | (b) Node | (b') Node nodelay | (c) bare C | (a)/(b) | (a)/(b') | (a)/(c) |
| --- | --- | --- | --- | --- | --- | --- | --- |
$(row "sequential calls/s" "%.0f" seq_cps)
$(row "sequential p50 ms" "%.3f" seq_p50_ms)
$(row "sequential p99 ms" "%.3f" seq_p99_ms)
$(row "pipelined calls/s ($DEPTH in flight)" "%.0f" pipe_cps)
$(row "pipelined: delegator CPU µs per call" "%.1f" pipe_cpu_us)
$(row "pipelined: worker CPU µs per call" "%.1f" wcpu_us)
$(row "slow adder calls/s, concurrency 1" "%.0f" slow1_cps)
$(row "slow adder calls/s, concurrency $DEPTH" "%.0f" slowN_cps)
$(rss_row "worker RSS idle" rss_idle)
$(rss_row "worker RSS under load (peak)" rss_load)
$(rss_row "worker RSS warm (after pipelined run)" rss_warm)
$(rss_row "worker RSS after $RSS_CALLS more calls" rss_after)

Ratios are (a) divided by the other peer: above 1 is better for calls/s, below 1 is better for
latency, CPU and RSS. Node's worker is prefetch 1 as shipped: it has no concurrency $DEPTH (n/a); its "concurrency 1" slow
adder row is that worker with $DEPTH calls in flight. Node's RSS after $RSS_CALLS calls is not measured
(it would take too long). RSS growth over the $RSS_CALLS calls: ours $(num "${R[a.rss_growth]:-}" "%d") KiB,
bare C $(num "${R[c.rss_growth]:-}" "%d") KiB. Slow adder concurrency $DEPTH / concurrency 1: ours
$(num "${R[a.slow_gain]:-}" "%s"), bare C $(num "${R[c.slow_gain]:-}" "%s").

## Targets (issue 4)

| target | measured | |
| --- | --- | --- |
| pipelined (a) >= 0.8 x (c) | $(ratio "${R[a.pipe_cps]:-}" "${R[c.pipe_cps]:-}") x | $(check 'a >= 0.8 * b' "${R[a.pipe_cps]:-}" "${R[c.pipe_cps]:-}") |
| pipelined (a) >= 20 x (b') | $(ratio "${R[a.pipe_cps]:-}" "${R[bn.pipe_cps]:-}") x | $(check 'a >= 20 * b' "${R[a.pipe_cps]:-}" "${R[bn.pipe_cps]:-}") |
| sequential p50 (a) <= 1.2 x (c) | $(ratio "${R[a.seq_p50_ms]:-}" "${R[c.seq_p50_ms]:-}") x | $(check 'a <= 1.2 * b' "${R[a.seq_p50_ms]:-}" "${R[c.seq_p50_ms]:-}") |
| slow adder conc $DEPTH >= 30 x conc 1 | $(num "${R[a.slow_gain]:-}" "%s") x | $(check 'a >= 30 * b' "${R[a.slowN_cps]:-}" "${R[a.slow1_cps]:-}") |
| host RSS idle <= 8 MiB | $(mib "${R[a.rss_idle]:-}") | $(check 'a <= 8192 + 0 * b' "${R[a.rss_idle]:-}" 0) |
| no RSS growth over $RSS_CALLS calls (<= 256 KiB) | $(num "${R[a.rss_growth]:-}" "%d") KiB | $(check 'a <= 256 + 0 * b' "${R[a.rss_growth]:-}" 0) |
EOF
    report_ab
}

ab_row() { # metric fmt key: (a) confirms on, off, off/on
    printf '| %s | %s | %s | %s |\n' "$1" "$(num "${R[a.$3]:-}" "$2")" "$(num "${R[an.$3]:-}" "$2")" \
        "$(ratio "${R[an.$3]:-}" "${R[a.$3]:-}")"
}
report_ab() {
    cat <<EOF

## A/B rows (the single node)

Publisher confirms: (a) as shipped (confirms on, on the worker and the delegator) against (a) with
\`confirms = false\` on both (\`BENCH_CONFIRMS=0\`), measured in the same alternating rounds as the
table above (medians of $REPEAT).

| metric | (a) confirms on | (a) confirms off | off/on |
| --- | --- | --- | --- |
$(ab_row "sequential calls/s" "%.0f" seq_cps)
$(ab_row "sequential p50 ms" "%.3f" seq_p50_ms)
$(ab_row "sequential p99 ms" "%.3f" seq_p99_ms)
$(ab_row "pipelined calls/s ($DEPTH in flight)" "%.0f" pipe_cps)
$(ab_row "pipelined: delegator CPU µs per call" "%.1f" pipe_cpu_us)

The keepalive count hook on the fast path: a task summing 1..$KEEPALIVE_N in a plain Lua loop
(\`bench/spin_worker.lua\`), on a host as shipped (the hook reads the clock every 10 000
instructions) and on one run with \`AMQP_DELEGATE_KEEPALIVE=0\` (no hook), called in turns,
median of $KEEPALIVE_RUNS calls each.

| time per loop iteration | hook on | AMQP_DELEGATE_KEEPALIVE=0 | on/off |
| --- | --- | --- | --- |
| ns, the task's CPU time (os.clock) | $(num "${R[ka_on_ns]:-}" "%.3f") | $(num "${R[ka_off_ns]:-}" "%.3f") | $(ratio3 "${R[ka_on_ns]:-}" "${R[ka_off_ns]:-}") |
| ns, wall clock | $(num "${R[ka_on_wall_ns]:-}" "%.3f") | $(num "${R[ka_off_wall_ns]:-}" "%.3f") | $(ratio3 "${R[ka_on_wall_ns]:-}" "${R[ka_off_wall_ns]:-}") |
EOF
}

report > "$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
cat "$RESULTS"
log "results written to ${RESULTS#"$ROOT"/}"
