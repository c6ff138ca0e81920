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
#   (g)  the same bare C program with BARE_GUARANTEES=1: it asks the broker for what ours asks
#        (publisher confirms on both sides, the ack after the reply's confirm, mandatory,
#        expiration, an x-deadline header); in the same alternating rounds as (a) and (c)
# With the broker started here, the broker's CPU per call is read (/proc/PID/stat of the node)
# over each pipelined run of (a), (c) and (g): the machine's CPUs divided by it is the most calls/s
# any client could reach against that broker, whatever the client costs.
# the figures: sequential calls/s, p50, p99; pipelined calls/s with DEPTH in flight; the 10 ms
# slow adder with DEPTH in flight at worker concurrency 1 and DEPTH; the worker process's RSS
# idle, under load and after BENCH_RSS_CALLS calls. Prints a table with the ratios (a)/(b) and
# (a)/(c) and writes it, with the command, date and machine, to bench/RESULTS.md.
# A/B rows on that node: (a) with publisher confirms off (BENCH_CONFIRMS=0 given to
# bench/adder_worker.lua and bench/lua_bench.lua: `confirms = false` on both sides) against (a) as
# shipped; the keepalive count hook's cost: a task summing 1..N (bench/spin_worker.lua) on a host
# as shipped and on one with AMQP_DELEGATE_KEEPALIVE=0 (bench/keepalive_bench.lua).
# A/B by revision (issue 13: what each change bought): every git revision in BENCH_AB_REVS is
# built from `git archive` in the temp dir, its host serves its own queue, and its lua_bench.lua
# runs take their turn in the same alternating rounds as (a) and (c); the table gives each
# revision's figures (worker CPU per call over its pipelined runs) and the ratio to the row before.
# Memory per call in flight: bench/inflight_bench.lua sends BENCH_INFLIGHT_CALLS calls to a worker
# that is not there, then starts one in the process; RSS idle, at the peak and after, for this
# tree and each BENCH_AB_REVS revision.
# Then the cluster (issue "Clusters and RabbitMQ 4", point 6): a 3-node cluster (scripts/cluster.sh)
# in the temp dir; per queue type (classic, quorum), on ONE queue name, one worker at a time:
#   (a)  ours: lua_bench.lua given the three URLs -> `amqp-delegate run --url URLS`
#        (AMQP_DELEGATE_QUEUE_TYPE=quorum for the quorum rows)
#   (c)  bare rabbitmq-c (BARE_QUEUE_TYPE=quorum: durable, x-queue-type quorum)
#   (d)  a well-written amqplib RPC peer (bench/node_rpc.js: one reply queue, correlation ids in
#        a Map, TCP_NODELAY, worker prefetch DEPTH)
#   (g)  bare rabbitmq-c with BARE_GUARANTEES=1 (what ours asks of the broker, as above)
# and the three nodes' CPU per call over each pipelined run (the brokers' share of the machine).
# (a) runs first in each round; its processes pick their node themselves (the URL list is
# shuffled per process), and (c) and (d) then connect their worker and client to the same nodes
# as (a)'s did in that round (read with ss), so every peer sees the same topology. Then the
# failover time: a host with the three URLs on a quorum queue, bench/failover_client.lua making
# sequential calls with {retry = 2, timeout = 30}; kill -9 the node of the host's connection (the
# delegator elsewhere), time from its death to the first answer after it; restart the node;
# BENCH_FAILOVER_ROUNDS times; then once the delegator's node while it leads the queue.
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
#   BENCH_AB_REVS=""            git revisions to compare with this tree (e.g. "main perf~2 perf~1")
#   BENCH_INFLIGHT_CALLS=100000 calls in flight at once for the memory row (0: no memory row)
#   BENCH_CLUSTER=1             0: no cluster section
#   BENCH_CLUSTER_CALLS=500     cluster: sequential calls per measurement
#   BENCH_CLUSTER_PIPE_CALLS=5000  cluster: pipelined calls per measurement (DEPTH in flight)
#   BENCH_CLUSTER_WARMUP=100    cluster: warm-up calls before every measurement
#   BENCH_CLUSTER_REPEAT=3      cluster: rounds per queue type (the table shows the medians)
#   BENCH_CLUSTER_MAX_SECONDS=5 cluster: cap on one measurement
#   BENCH_FAILOVER_ROUNDS=5     kills of the worker's node for the failover time (0: no failover
#                               part; else one more round kills the delegator's node)
#   BENCH_FAILOVER_WAIT=20      seconds to wait for an answer before the killed node is restarted
#   BENCH_AMQP_URL=amqp://...   use that broker instead of starting one (single-node part)
#   BENCH_SKIP_BUILD=1          do not run cmake (the build dir must hold the binaries)
#   BENCH_TMPDIR=/tmp           where the temp dir (logs, brokers, cluster) is made
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
CLUSTER=${BENCH_CLUSTER:-1}
read -r -a AB_REVS <<<"${BENCH_AB_REVS:-}"
INFLIGHT_CALLS=${BENCH_INFLIGHT_CALLS:-100000}
CL_CALLS=${BENCH_CLUSTER_CALLS:-500}
CL_PIPE_CALLS=${BENCH_CLUSTER_PIPE_CALLS:-5000}
CL_WARMUP=${BENCH_CLUSTER_WARMUP:-100}
CL_REPEAT=${BENCH_CLUSTER_REPEAT:-3}
CL_MAX_SECONDS=${BENCH_CLUSTER_MAX_SECONDS:-5}
FAILOVER_ROUNDS=${BENCH_FAILOVER_ROUNDS:-5}
FAILOVER_WAIT=${BENCH_FAILOVER_WAIT:-20}
BUILD=${BUILD_DIR:-$ROOT/build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo}
RESULTS=${BENCH_RESULTS:-$ROOT/bench/RESULTS.md}

log() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ cleanup
PIDS=()          # every background process we started (and only those)
BROKER_DIR=""
CL_DIR=""       # set once scripts/cluster.sh start was called: cleanup stops it
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
    if [ -n "$CL_DIR" ]; then
        log "stopping the cluster"
        bash "$ROOT/scripts/cluster.sh" stop "$CL_DIR" >/dev/null 2>&1 || true
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
AB_BUILDS=(); AB_LABELS=()
for i in "${!AB_REVS[@]}"; do
    rev=${AB_REVS[$i]}
    git -C "$ROOT" rev-parse --verify -q "$rev^{commit}" >/dev/null || die "BENCH_AB_REVS: no revision $rev"
    mkdir -p "$WORK/ab$i/src"
    log "building revision $rev for the A/B rows"
    git -C "$ROOT" archive "$rev" | tar -x -C "$WORK/ab$i/src" || die "cannot extract $rev"
    cmake -S "$WORK/ab$i/src" -B "$WORK/ab$i/build" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" >&2 \
        && cmake --build "$WORK/ab$i/build" -j2 --target amqp-delegate amqp_delegate_module >&2 \
        || die "cannot build revision $rev"
    AB_BUILDS+=("$WORK/ab$i/build")
    AB_LABELS+=("$(git -C "$ROOT" log -1 --format='%h %s' "$rev" | cut -c1-90)")
done
THIS_TREE="$(git -C "$ROOT" log -1 --format='%h %s' HEAD | cut -c1-90)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
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
QG=bench_bare_guaranteed_adder
QA=bench_lua_adder
QAN=bench_lua_adder_noconfirms
start_worker bare_worker "$BARE" worker "$URL" $QC "$DEPTH"
CPID=$WPID
BARE_GUARANTEES=1 start_worker bare_guaranteed_worker "$BARE" worker "$URL" $QG "$DEPTH"
GPID=$WPID
BENCH_WORKER_NAME=$QA BENCH_DELAY_MS=0 start_worker lua_worker "$HOST" run --url "$URL" \
    --concurrency "$DEPTH" --log-level warn "$ROOT/bench/adder_worker.lua"
APID=$WPID
BENCH_CONFIRMS=0 BENCH_WORKER_NAME=$QAN BENCH_DELAY_MS=0 start_worker lua_worker_noconfirms "$HOST" run \
    --url "$URL" --concurrency "$DEPTH" --log-level warn "$ROOT/bench/adder_worker.lua"
ANPID=$WPID
AB_PIDS=()
for i in "${!AB_BUILDS[@]}"; do
    LUA_CPATH="${AB_BUILDS[$i]}/?.so;$BUILD/bench/?.so;;" BENCH_WORKER_NAME=bench_ab$i BENCH_DELAY_MS=0 \
        start_worker "ab${i}_worker" "${AB_BUILDS[$i]}/amqp-delegate" run --url "$URL" \
        --concurrency "$DEPTH" --log-level warn "$ROOT/bench/adder_worker.lua"
    AB_PIDS+=("$WPID")
done
ab_measure() { # i mode calls depth round
    LUA_CPATH="${AB_BUILDS[$1]}/?.so;$BUILD/bench/?.so;;" measure "ab$1.$2@$5" "ab$1_$2$5" \
        "${LUA_BENCH[@]}" "$URL" "bench_ab$1" "$2" "$3" "$WARMUP" "$4" "$MAX_SECONDS"
}
worker_cpu() { # key pid ticks_before: the worker's CPU µs per call over the measured and warm-up calls
    local calls=${R[$1_calls]:-}
    [ -n "$calls" ] && R[$1_wcpu_us]=$(cpu_us_per_call "$3" "$(cpu_ticks "$2")" $((calls + WARMUP)))
    return 0
}
# The Erlang VMs whose CPU is the broker's: the node this script started, later the cluster's
# three (none with BENCH_AMQP_URL: no broker figures then).
BROKER_PIDS=()
vm_pid() { tr -dc '0-9' < "$1/rabbitmq.pid" 2>/dev/null || true; }  # node dir -> its VM's pid
[ -n "$BROKER_DIR" ] && BROKER_PIDS=("$(vm_pid "$BROKER_DIR")")
broker_ticks() { # the CPU ticks of BROKER_PIDS, summed; nothing when one cannot be read
    local pid sum=0 t
    [ "${#BROKER_PIDS[@]}" -gt 0 ] || return 0
    for pid in "${BROKER_PIDS[@]}"; do
        t=$( [ -n "$pid" ] && cpu_ticks "$pid" || true)
        [ -n "$t" ] || return 0
        sum=$((sum + t))
    done
    echo "$sum"
}
broker_before() { BROKER_BEFORE=$(broker_ticks); }
broker_cpu() { # key warmup: the broker's CPU µs per call since broker_before (warm-up calls included)
    local calls=${R[$1_calls]:-} after
    after=$(broker_ticks)
    [ -n "$calls" ] && [ -n "$BROKER_BEFORE" ] && [ -n "$after" ] &&
        R[$1_bcpu_us]=$(cpu_us_per_call "$BROKER_BEFORE" "$after" $((calls + $2)))
    return 0
}
sleep 0.5
R[c.rss_idle]=$(rss_kib "$CPID")
R[a.rss_idle]=$(rss_kib "$APID")
for r in $(seq 1 "$REPEAT"); do
    measure "c.seq@$r" "bare_seq$r" "$BARE" client "$URL" $QC seq "$CALLS" "$WARMUP" 1 "$MAX_SECONDS"
    measure "a.seq@$r" "lua_seq$r" "${LUA_BENCH[@]}" "$URL" $QA seq "$CALLS" "$WARMUP" 1 "$MAX_SECONDS"
    BARE_GUARANTEES=1 measure "g.seq@$r" "bare_guaranteed_seq$r" "$BARE" client "$URL" $QG seq "$CALLS" \
        "$WARMUP" 1 "$MAX_SECONDS"
    BENCH_CONFIRMS=0 measure "an.seq@$r" "lua_noconfirms_seq$r" "${LUA_BENCH[@]}" "$URL" $QAN seq "$CALLS" \
        "$WARMUP" 1 "$MAX_SECONDS"
    for i in "${!AB_BUILDS[@]}"; do ab_measure "$i" seq "$CALLS" 1 "$r"; done
done
peaks_a=(); peaks_c=()
for r in $(seq 1 "$REPEAT"); do
    start_sampler "$CPID"
    before=$(cpu_ticks "$CPID")
    broker_before
    measure "c.pipe@$r" "bare_pipe$r" "$BARE" client "$URL" $QC pipe "$PIPE_CALLS" "$WARMUP" "$DEPTH" "$MAX_SECONDS"
    worker_cpu "c.pipe@$r" "$CPID" "$before"
    broker_cpu "c.pipe@$r" "$WARMUP"
    stop_sampler
    peaks_c+=("$PEAK")
    start_sampler "$APID"
    before=$(cpu_ticks "$APID")
    broker_before
    measure "a.pipe@$r" "lua_pipe$r" "${LUA_BENCH[@]}" "$URL" $QA pipe "$PIPE_CALLS" "$WARMUP" "$DEPTH" "$MAX_SECONDS"
    worker_cpu "a.pipe@$r" "$APID" "$before"
    broker_cpu "a.pipe@$r" "$WARMUP"
    stop_sampler
    peaks_a+=("$PEAK")
    before=$(cpu_ticks "$GPID")
    broker_before
    BARE_GUARANTEES=1 measure "g.pipe@$r" "bare_guaranteed_pipe$r" "$BARE" client "$URL" $QG pipe "$PIPE_CALLS" \
        "$WARMUP" "$DEPTH" "$MAX_SECONDS"
    worker_cpu "g.pipe@$r" "$GPID" "$before"
    broker_cpu "g.pipe@$r" "$WARMUP"
    for i in "${!AB_BUILDS[@]}"; do
        before=$(cpu_ticks "${AB_PIDS[$i]}")
        ab_measure "$i" pipe "$PIPE_CALLS" "$DEPTH" "$r"
        worker_cpu "ab$i.pipe@$r" "${AB_PIDS[$i]}" "$before"
    done
    BENCH_CONFIRMS=0 measure "an.pipe@$r" "lua_noconfirms_pipe$r" "${LUA_BENCH[@]}" "$URL" $QAN pipe \
        "$PIPE_CALLS" "$WARMUP" "$DEPTH" "$MAX_SECONDS"
done
stop_pid "$ANPID"
stop_pid "$GPID"
for pid in "${AB_PIDS[@]}"; do stop_pid "$pid"; done
R[c.rss_load]=$(max_of "${peaks_c[@]}")
R[a.rss_load]=$(max_of "${peaks_a[@]}")
AB_PEERS=()
for i in "${!AB_BUILDS[@]}"; do AB_PEERS+=("ab$i"); done
for p in a an c g "${AB_PEERS[@]}"; do
    for m in seq pipe; do
        for k in calls cps cpu_us p50_ms p99_ms wcpu_us bcpu_us; do
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

# memory per call in flight: this tree, then each A/B revision
if [ "$INFLIGHT_CALLS" -gt 0 ]; then
    measure "a.inflight" inflight lua5.4 "$ROOT/bench/inflight_bench.lua" "$URL" bench_inflight "$INFLIGHT_CALLS"
    for i in "${!AB_BUILDS[@]}"; do
        LUA_CPATH="${AB_BUILDS[$i]}/?.so;$BUILD/bench/?.so;;" measure "ab$i.inflight" "ab${i}_inflight" \
            lua5.4 "$ROOT/bench/inflight_bench.lua" "$URL" "bench_inflight_ab$i" "$INFLIGHT_CALLS"
    done
fi

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
# Two hosts serve bench/spin_worker.lua (a task that sums 1..N): one as shipped (a timer signal
# sets the count hook on a task that ran a whole 20 ms tick), one with AMQP_DELEGATE_KEEPALIVE=0;
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
# ------------------------------------------------------------------ the cluster
# The single node is not needed any more: stopped, so that it takes no CPU from the cluster.
if [ "$CLUSTER" != 0 ] && [ -n "$BROKER_DIR" ]; then
    bash "$ROOT/scripts/rabbitmq.sh" stop "$BROKER_DIR" >/dev/null 2>&1 || true
    BROKER_DIR=""
fi

port_of_pid() { # pid -> the peer port of its first established TCP connection (ss), or nothing
    ss -tnpH state established 2>/dev/null | awk -v tag="pid=$1," 'index($0, tag) {
        n = 0
        for (i = 1; i <= NF; i++) if ($i ~ /:[0-9]+$/ && ++n == 2) { sub(/.*:/, "", $i); print $i; exit }
    }'
}
k_of_port() { # port -> K of the cluster node listening there, or nothing
    local k v
    for k in 1 2 3; do
        v=CLUSTER_PORT_$k
        [ "${!v}" = "${1:-none}" ] && { echo "$k"; return 0; }
    done
    return 0
}
url_of() { local v=CLUSTER_URL_$1; echo "${!v}"; }
node_of_pid() { # pid -> K of the node its connection goes to (waits up to 5 s), or nothing
    local i k
    for i in $(seq 1 50); do
        k=$(k_of_port "$(port_of_pid "$1")")
        [ -n "$k" ] && { echo "$k"; return 0; }
        sleep 0.1
    done
    return 0
}
queue_home() { # queue -> K of the node holding it (a quorum queue's leader, a classic queue's node)
    local k v out node
    for k in 1 2 3; do
        v=CLUSTER_DIR_$k
        out=$(timeout 60 bash "$ROOT/scripts/rabbitmq.sh" ctl "${!v}" -q list_queues --no-table-headers \
            name type leader pid 2>/dev/null) || continue
        node=$(awk -F'\t' -v q="$1" '$1 == q {
            if ($2 == "quorum") print $3
            else { p = $4; sub(/^</, "", p); sub(/(\.[0-9]+)+>$/, "", p); print p }
            exit }' <<<"$out")
        for k in 1 2 3; do
            v=CLUSTER_NODE_$k
            [ -n "$node" ] && [ "${!v}" = "$node" ] && { echo "$k"; return 0; }
        done
        return 0
    done
    return 0
}

CL_TOPOLOGY=()    # one line per round: where each process was
FAILOVER=()       # one line per kill
if [ "$CLUSTER" != 0 ]; then
    CL_DIR=$WORK/cluster
    log "starting a 3-node cluster in $CL_DIR"
    cl_t0=$SECONDS
    bash "$ROOT/scripts/cluster.sh" start "$CL_DIR" > "$WORK/cluster.start.out" 2> "$WORK/cluster.start.err" \
        || { tail -n 20 "$WORK/cluster.start.err" >&2; die "the cluster did not start"; }
    R[cl.start_s]=$((SECONDS - cl_t0))
    # shellcheck disable=SC1091
    . "$CL_DIR/env"
    log "cluster up in ${R[cl.start_s]} s: $CLUSTER_URLS"
    BROKER_PIDS=()
    for k in 1 2 3; do
        v=CLUSTER_DIR_$k
        BROKER_PIDS+=("$(vm_pid "${!v}")")
    done
    NODE_RPC=(node "$ROOT/bench/node_rpc.js")
    for T in classic quorum; do
        Q=bench_cluster_$T
        for r in $(seq 1 "$CL_REPEAT"); do
            # (a) ours: the host and the delegators get the three URLs and choose their node
            if [ $T = quorum ]; then qenv=(env AMQP_DELEGATE_QUEUE_TYPE=quorum); else qenv=(env -u AMQP_DELEGATE_QUEUE_TYPE); fi
            BENCH_WORKER_NAME=$Q BENCH_DELAY_MS=0 start_worker "cl_${T}_lua_worker$r" "${qenv[@]}" "$HOST" run \
                --url "$CLUSTER_URLS" --concurrency "$DEPTH" --log-level warn "$ROOT/bench/adder_worker.lua"
            kw=$(node_of_pid "$WPID")
            BENCH_SHOW_PEER=1 measure "cl.$T.a.seq@$r" "cl_${T}_lua_seq$r" "${LUA_BENCH[@]}" "$CLUSTER_URLS" "$Q" seq \
                "$CL_CALLS" "$CL_WARMUP" 1 "$CL_MAX_SECONDS"
            broker_before
            BENCH_SHOW_PEER=1 measure "cl.$T.a.pipe@$r" "cl_${T}_lua_pipe$r" "${LUA_BENCH[@]}" "$CLUSTER_URLS" "$Q" pipe \
                "$CL_PIPE_CALLS" "$CL_WARMUP" "$DEPTH" "$CL_MAX_SECONDS"
            broker_cpu "cl.$T.a.pipe@$r" "$CL_WARMUP"
            stop_worker
            ks=$(k_of_port "${R[cl.$T.a.seq@${r}_peer_port]:-}")
            kp=$(k_of_port "${R[cl.$T.a.pipe@${r}_peer_port]:-}")
            [ -n "$kw" ] || { log "cannot tell the node of ours' worker: node 1 for the others"; kw=1; }
            [ -n "$ks" ] || { log "cannot tell the node of ours' sequential delegator: node 1 for the others"; ks=1; }
            [ -n "$kp" ] || { log "cannot tell the node of ours' pipelined delegator: node 1 for the others"; kp=1; }
            [ "$r" = 1 ] && R[cl.$T.home]=$(queue_home "$Q")
            CL_TOPOLOGY+=("$T round $r: queue on node ${R[cl.$T.home]:-?}, worker on node $kw, sequential client on node $ks, pipelined client on node $kp")
            # (c) bare rabbitmq-c, on the same nodes
            if [ $T = quorum ]; then qenv=(env BARE_QUEUE_TYPE=quorum); else qenv=(env -u BARE_QUEUE_TYPE); fi
            start_worker "cl_${T}_bare_worker$r" "${qenv[@]}" "$BARE" worker "$(url_of "$kw")" "$Q" "$DEPTH"
            measure "cl.$T.c.seq@$r" "cl_${T}_bare_seq$r" "$BARE" client "$(url_of "$ks")" "$Q" seq \
                "$CL_CALLS" "$CL_WARMUP" 1 "$CL_MAX_SECONDS"
            broker_before
            measure "cl.$T.c.pipe@$r" "cl_${T}_bare_pipe$r" "$BARE" client "$(url_of "$kp")" "$Q" pipe \
                "$CL_PIPE_CALLS" "$CL_WARMUP" "$DEPTH" "$CL_MAX_SECONDS"
            broker_cpu "cl.$T.c.pipe@$r" "$CL_WARMUP"
            stop_worker
            # (g) bare rabbitmq-c asking what ours asks, on the same nodes
            BARE_GUARANTEES=1 start_worker "cl_${T}_bare_guaranteed_worker$r" "${qenv[@]}" "$BARE" worker \
                "$(url_of "$kw")" "$Q" "$DEPTH"
            BARE_GUARANTEES=1 measure "cl.$T.g.seq@$r" "cl_${T}_bare_guaranteed_seq$r" "$BARE" client \
                "$(url_of "$ks")" "$Q" seq "$CL_CALLS" "$CL_WARMUP" 1 "$CL_MAX_SECONDS"
            broker_before
            BARE_GUARANTEES=1 measure "cl.$T.g.pipe@$r" "cl_${T}_bare_guaranteed_pipe$r" "$BARE" client \
                "$(url_of "$kp")" "$Q" pipe "$CL_PIPE_CALLS" "$CL_WARMUP" "$DEPTH" "$CL_MAX_SECONDS"
            broker_cpu "cl.$T.g.pipe@$r" "$CL_WARMUP"
            stop_worker
            # (d) amqplib, on the same nodes
            qflag=(); [ $T = quorum ] && qflag=(--quorum)
            start_worker "cl_${T}_amqplib_worker$r" "${NODE_RPC[@]}" worker "$(url_of "$kw")" "$Q" \
                --prefetch "$DEPTH" "${qflag[@]}"
            measure "cl.$T.d.seq@$r" "cl_${T}_amqplib_seq$r" "${NODE_RPC[@]}" client "$(url_of "$ks")" "$Q" seq \
                "$CL_CALLS" "$CL_WARMUP" 1 --max-seconds "$CL_MAX_SECONDS"
            broker_before
            measure "cl.$T.d.pipe@$r" "cl_${T}_amqplib_pipe$r" "${NODE_RPC[@]}" client "$(url_of "$kp")" "$Q" pipe \
                "$CL_PIPE_CALLS" "$CL_WARMUP" "$DEPTH" --max-seconds "$CL_MAX_SECONDS"
            broker_cpu "cl.$T.d.pipe@$r" "$CL_WARMUP"
            stop_worker
        done
        for p in a c d g; do
            for m in seq pipe; do
                for k in cps p50_ms p99_ms cpu_us bcpu_us; do
                    vals=()
                    for r in $(seq 1 "$CL_REPEAT"); do vals+=("${R[cl.$T.$p.$m@${r}_$k]:-}"); done
                    R[cl.$T.$p.${m}_$k]=$(median "${vals[@]}")
                done
            done
        done
    done

    # The failover time: kill -9 a node, and time from the VM's death (polled every 10 ms) to the
    # first answer the delegator got after it. Rounds 1..FAILOVER_ROUNDS kill the node of the worker
    # host's connection, with the delegator on another node (it is started again until it is);
    # then one more round kills the delegator's node while it holds the quorum queue's leader.
    # Should no answer come within FAILOVER_WAIT s, the node is restarted and the wait goes on
    # (the row says so); otherwise the node is restarted after the answer.
    if [ "$FAILOVER_ROUNDS" -gt 0 ]; then
        QF=bench_failover
        FO_OUT=$WORK/failover.answers
        FO_STOP=$WORK/failover.stop
        FO_CLIENTS=0
        rm -f "$FO_STOP" "$FO_OUT"
        BENCH_WORKER_NAME=$QF BENCH_DELAY_MS=0 start_worker failover_worker env AMQP_DELEGATE_QUEUE_TYPE=quorum \
            "$HOST" run --url "$CLUSTER_URLS" --log-level info "$ROOT/bench/adder_worker.lua"
        FO_WORKER=$WPID
        start_fo_client() { # a new delegator process (new shuffle of the URLs); sets FO_CLIENT
            FO_CLIENTS=$((FO_CLIENTS + 1))
            BENCH_LOG_LEVEL=info start_worker "failover_client$FO_CLIENTS" lua5.4 "$ROOT/bench/failover_client.lua" \
                "$CLUSTER_URLS" "$QF" "$FO_OUT" "$FO_STOP" 2 30
            FO_CLIENT=$WPID
        }
        stop_fo_client() { touch "$FO_STOP"; wait "$FO_CLIENT" 2>/dev/null || true; rm -f "$FO_STOP"; }
        place_fo_client() { # want: "not K" or "on K" -> restarts the delegator until it is placed so
            local want=$1 k=$2 i kd
            for i in $(seq 1 12); do
                kd=$(node_of_pid "$FO_CLIENT")
                case $want in
                not) [ -n "$kd" ] && [ "$kd" != "$k" ] && return 0 ;;
                on) [ "$kd" = "$k" ] && return 0 ;;
                esac
                stop_fo_client
                start_fo_client
            done
            log "failover: could not place the delegator $want node $k"
        }
        first_answer_after() { # wall time t -> the first answer after t, or nothing
            awk -v t="$1" '$3 == "ok" && $2 > t {print $2; exit}' "$FO_OUT"
        }
        wait_answer_after() { # t seconds -> waits up to that long for an answer after t; prints it
            local t=$1 deadline=$((SECONDS + $2)) a
            while :; do
                a=$(first_answer_after "$t")
                [ -n "$a" ] && { echo "$a"; return 0; }
                [ $SECONDS -lt $deadline ] || return 0
                sleep 0.1
            done
        }
        failover_round() { # label K -> kills node K, appends a row to FAILOVER, sets R[fo.label]
            local f=$1 kk=$2 kw kd kl v vm before_kill killer dead first st i errors secs note=""
            kw=$(node_of_pid "$FO_WORKER")
            kd=$(node_of_pid "$FO_CLIENT")
            kl=$(bash "$ROOT/scripts/cluster.sh" leader "$CL_DIR" "$QF" 2>/dev/null || true)
            v=CLUSTER_DIR_$kk
            vm=$(tr -dc '0-9' < "${!v}/rabbitmq.pid" 2>/dev/null || true)
            before_kill=$EPOCHREALTIME
            bash "$ROOT/scripts/cluster.sh" kill "$CL_DIR" "$kk" 2>> "$WORK/failover.cluster.log" &
            killer=$!
            PIDS+=("$killer")
            dead=""
            if [ -n "$vm" ]; then # the moment the VM is gone or a zombie
                for i in $(seq 1 2000); do
                    st=""
                    { read -r st < "/proc/$vm/stat"; } 2>/dev/null || true
                    st=${st##*) }
                    if [ -z "$st" ] || [ "${st:0:1}" = Z ]; then dead=$EPOCHREALTIME; break; fi
                    sleep 0.01
                done
            fi
            wait "$killer" || log "failover $f: cluster.sh kill failed"
            [ -n "$dead" ] || { dead=$before_kill; note=" (time from the kill command)"; }
            first=$(wait_answer_after "$dead" "$FAILOVER_WAIT")
            if [ -z "$first" ]; then
                log "failover $f: no answer $FAILOVER_WAIT s after node $kk died: restarting it"
                bash "$ROOT/scripts/cluster.sh" restart "$CL_DIR" "$kk" >/dev/null 2>> "$WORK/failover.cluster.log" \
                    || die "node $kk did not come back"
                first=$(wait_answer_after "$dead" 60)
                note="$note (no answer before the node was restarted)"
            else
                bash "$ROOT/scripts/cluster.sh" restart "$CL_DIR" "$kk" >/dev/null 2>> "$WORK/failover.cluster.log" \
                    || die "node $kk did not come back"
            fi
            errors=$(awk -v t="$before_kill" -v e="${first:-9e99}" '$3 != "ok" && $2 > t && $2 <= e {n++} END {print n + 0}' "$FO_OUT")
            secs=$( [ -n "$first" ] && awk -v a="$first" -v b="$dead" 'BEGIN {printf "%.3f", a - b}' || true)
            FAILOVER+=("$f|$kk|${kw:-?}|${kd:-?}|${kl:-?}|${secs:-none}$note|$errors")
            R[fo.$f]=$secs
            log "failover $f: node $kk killed (worker on ${kw:-?}, delegator on ${kd:-?}, leader ${kl:-?}): first answer after ${secs:-none} s$note"
        }
        start_fo_client
        for f in $(seq 1 "$FAILOVER_ROUNDS"); do
            sleep 2   # answers flowing on every node again
            kk=$(node_of_pid "$FO_WORKER")
            [ -n "$kk" ] || { log "failover $f: cannot tell the worker's node"; break; }
            place_fo_client not "$kk"
            sleep 1
            failover_round "$f" "$kk"
        done
        # the delegator's node, while it leads the queue
        sleep 2
        kl=$(bash "$ROOT/scripts/cluster.sh" leader "$CL_DIR" "$QF" 2>/dev/null || true)
        if [ -n "$kl" ]; then
            place_fo_client on "$kl"
            sleep 1
            failover_round D "$kl"
        fi
        stop_fo_client
        for i in $(seq 1 "$FO_CLIENTS"); do
            grep '^RESULT ' "$WORK/failover_client$i.out" 2>/dev/null || true
        done | awk '{s[$2] += $3} END {for (k in s) print k, s[k]}' > "$WORK/failover.stats"
        while read -r k v; do R[fo.$k]=$v; done < "$WORK/failover.stats"
        R[fo.errors]=$(awk '$3 != "ok" {n++} END {print n + 0}' "$FO_OUT")
        R[fo.clients]=$FO_CLIENTS
        stop_pid "$FO_WORKER"
        vals=(); for f in $(seq 1 "$FAILOVER_ROUNDS"); do vals+=("${R[fo.$f]:-}"); done
        R[fo.median]=$(median "${vals[@]}")
        R[fo.min]=$(min_of "${vals[@]}")
        R[fo.max]=$(max_of "${vals[@]}")
        R[fo.count]=$(nonempty "${vals[@]}" | wc -l)
    fi
    log "stopping the cluster"
    bash "$ROOT/scripts/cluster.sh" stop "$CL_DIR" >/dev/null 2>&1 || log "cluster.sh stop failed"
    CL_DIR=""
fi

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

## Targets (issue 13)

| target | measured | |
| --- | --- | --- |
| pipelined (a) >= 1.2 x (c) | $(ratio "${R[a.pipe_cps]:-}" "${R[c.pipe_cps]:-}") x (round by round: $(paired a c pipe_cps) x) | $(check 'a >= 1.2 * b' "${R[a.pipe_cps]:-}" "${R[c.pipe_cps]:-}") |
| sequential p50 (a) <= 1.0 x (c) | $(ratio "${R[a.seq_p50_ms]:-}" "${R[c.seq_p50_ms]:-}") x (round by round: $(paired a c seq_p50_ms) x) | $(check 'a <= b' "${R[a.seq_p50_ms]:-}" "${R[c.seq_p50_ms]:-}") |
| delegator CPU per call (a) <= (c), pipelined | $(ratio "${R[a.pipe_cpu_us]:-}" "${R[c.pipe_cpu_us]:-}") x | $(check 'a <= b' "${R[a.pipe_cpu_us]:-}" "${R[c.pipe_cpu_us]:-}") |
| worker CPU per call (a) <= (c), pipelined | $(ratio "${R[a.pipe_wcpu_us]:-}" "${R[c.pipe_wcpu_us]:-}") x | $(check 'a <= b' "${R[a.pipe_wcpu_us]:-}" "${R[c.pipe_wcpu_us]:-}") |
| cluster, quorum, pipelined (a) >= 1.5 x (d) | $(ratio "${R[cl.quorum.a.pipe_cps]:-}" "${R[cl.quorum.d.pipe_cps]:-}") x | $(check 'a >= 1.5 * b' "${R[cl.quorum.a.pipe_cps]:-}" "${R[cl.quorum.d.pipe_cps]:-}") |
| $INFLIGHT_CALLS in flight: RSS after <= idle + 4 MiB | $(mib "${R[a.inflight_rss_after_kib]:-}") (idle $(mib "${R[a.inflight_rss_idle_kib]:-}")) | $(check 'a <= b + 4096' "${R[a.inflight_rss_after_kib]:-}" "${R[a.inflight_rss_idle_kib]:-}") |

Worker CPU per call here: the worker process's CPU time over the pipelined runs of the rounds
(their warm-up calls included), median of the rounds; the figure in the first table is over the
$RSS_CALLS-call run.
EOF
    report_broker
    report_revisions
    if [ -f "$ROOT/bench/PROFILE.md" ]; then printf '\n'; cat "$ROOT/bench/PROFILE.md"; fi
    report_ab
    report_cluster
}

ceiling() { # broker µs per call -> the calls/s the machine's CPUs allow at that broker cost alone
    [ -n "${1:-}" ] && awk -v b="$1" -v n="$(nproc)" 'BEGIN {if (b > 0) printf "%.0f", n * 1e6 / b}' || true
}
total_cpu() { # peer -> delegator + worker + broker µs per call, pipelined
    local d=${R[$1.pipe_cpu_us]:-} w=${R[$1.pipe_wcpu_us]:-} b=${R[$1.pipe_bcpu_us]:-}
    [ -n "$d" ] && [ -n "$w" ] && [ -n "$b" ] && awk -v d="$d" -v w="$w" -v b="$b" 'BEGIN {printf "%.1f", d + w + b}' || true
}
broker_row() { # label peer
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$(num "${R[$2.pipe_cps]:-}" "%.0f")" \
        "$(num "${R[$2.seq_p50_ms]:-}" "%.3f")" \
        "$(num "${R[$2.pipe_cpu_us]:-}" "%.1f")" "$(num "${R[$2.pipe_wcpu_us]:-}" "%.1f")" \
        "$(num "${R[$2.pipe_bcpu_us]:-}" "%.1f")" "$(num "$(total_cpu "$2")" "%.1f")" \
        "$(num "$(ceiling "${R[$2.pipe_bcpu_us]:-}")" "%.0f")"
}
report_broker() {
    [ -n "${R[a.pipe_bcpu_us]:-}${R[c.pipe_bcpu_us]:-}" ] || return 0 # no broker of ours measured
    local need
    need=$(awk -v c="${R[c.pipe_cps]:-0}" 'BEGIN {printf "%.0f", 1.2 * c}')
    cat <<EOF

## Where the machine's CPU goes (issue 13)

Per call, over the pipelined runs of the same $REPEAT rounds (medians; warm-up calls included for
the worker and the broker, read from /proc/PID/stat): the delegator's, the worker's and the
broker's CPU; and the sequential p50 of the same rounds. **(g)** is \`bare_roundtrip\` with
\`BARE_GUARANTEES=1\`: the bare C program asking the broker for what ours asks (publisher confirms
on both sides, the ack sent once the reply is confirmed, mandatory, a 30 s expiration, an
x-deadline header, content_type). "Ceiling" is $(nproc) CPUs divided by the broker's CPU per call:
the calls/s no client could pass against this broker, even one that took no CPU itself.

| peer | pipelined calls/s | sequential p50 ms | delegator µs | worker µs | broker µs | total µs | ceiling calls/s |
| --- | --- | --- | --- | --- | --- | --- | --- |
$(broker_row "(a) ours" a)
$(broker_row "(c) bare rabbitmq-c" c)
$(broker_row "(g) bare rabbitmq-c, our guarantees" g)

Ours against (g), round by round: pipelined calls/s $(paired a g pipe_cps) x, sequential p50
$(paired a g seq_p50_ms) x. The broker spends $(ratio "${R[a.pipe_bcpu_us]:-}" "${R[c.pipe_bcpu_us]:-}") x as much CPU on a call of (a) as on one of (c),
and $(ratio "${R[a.pipe_bcpu_us]:-}" "${R[g.pipe_bcpu_us]:-}") x as much as on one of (g). Issue 13's 1.2 x (c) is $need calls/s; the ceiling this
broker leaves ours is $(num "$(ceiling "${R[a.pipe_bcpu_us]:-}")" "%.0f") calls/s.
EOF
}

paired() { # peer other mode_metric (e.g. pipe_cps): the median over the rounds of peer/other,
    # each round's pair measured back to back (steadier than a ratio of medians on a shared machine)
    local r vals=() a b
    for r in $(seq 1 "$REPEAT"); do
        a=${R[$1.${3%%_*}@${r}_${3#*_}]:-}; b=${R[$2.${3%%_*}@${r}_${3#*_}]:-}
        [ -n "$a" ] && [ -n "$b" ] && vals+=("$(awk -v a="$a" -v b="$b" 'BEGIN {if (b > 0) printf "%.4f", a / b}')")
    done
    local m
    m=$(median "${vals[@]}")
    [ -n "$m" ] && awk -v m="$m" 'BEGIN {printf "%.2f", m}' || printf 'n/a'
}
rev_row() { # label peer previous_peer
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" \
        "$(num "${R[$2.seq_cps]:-}" "%.0f")" "$(num "${R[$2.seq_p50_ms]:-}" "%.3f")" \
        "$(num "${R[$2.pipe_cps]:-}" "%.0f")" "$(num "${R[$2.pipe_cpu_us]:-}" "%.1f")" \
        "$(num "${R[$2.pipe_wcpu_us]:-}" "%.1f")" \
        "$( [ -n "$3" ] && paired "$2" "$3" pipe_cps || printf -- '-')" \
        "$( [ -n "$3" ] && paired "$2" "$3" seq_p50_ms || printf -- '-')"
}
mem_row() { # label peer
    printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$(mib "${R[$2.inflight_rss_idle_kib]:-}")" \
        "$(mib "${R[$2.inflight_rss_peak_kib]:-}")" "$(mib "${R[$2.inflight_rss_after_kib]:-}")" \
        "$(num "${R[$2.inflight_bytes_per_call]:-}" "%.0f")" \
        "$(num "${R[$2.inflight_seconds_answer]:-}" "%.2f")"
}
report_revisions() {
    local i previous=""
    if [ "${#AB_BUILDS[@]}" -gt 0 ]; then
        cat <<EOF

## A/B by revision (issue 13: what each change bought)

Each revision built from \`git archive\` and served by its own host (its own queue, concurrency
$DEPTH), its \`lua_bench.lua\` runs taking their turn in the same $REPEAT alternating rounds as (a) and
(c) above; medians. "vs previous": pipelined calls/s and sequential p50 divided by the row
above's, round by round (each pair measured one after the other), median of the rounds; "vs
first": the same against the first revision.

| revision | seq calls/s | seq p50 ms | pipelined calls/s | delegator µs/call | worker µs/call | pipelined vs previous | p50 vs previous |
| --- | --- | --- | --- | --- | --- | --- | --- |
$(for i in "${!AB_BUILDS[@]}"; do rev_row "${AB_LABELS[$i]}" "ab$i" "$previous"; previous=ab$i; done
  rev_row "this tree: $THIS_TREE" a "$previous"
  rev_row "(c) bare rabbitmq-c" c "")

This tree against the first revision, round by round: pipelined calls/s $(paired a ab0 pipe_cps) x,
sequential p50 $(paired a ab0 seq_p50_ms) x, sequential calls/s $(paired a ab0 seq_cps) x.
EOF
    fi
    [ "$INFLIGHT_CALLS" -gt 0 ] || return 0
    cat <<EOF

## $INFLIGHT_CALLS calls in flight from one delegator

\`bench/inflight_bench.lua\`: the worker's queue exists with no consumer; one delegator sends
$INFLIGHT_CALLS calls with \`:send()\` (publisher confirms on), then a worker started in the same
process (concurrency 64) answers them all; the handles are dropped and the garbage collected.
RSS of that process: idle (started, nothing in flight), at the peak (all sent and confirmed, none
answered), after. Bytes per call: (peak - idle) / $INFLIGHT_CALLS, everything a call in flight
holds (the delegator's C state, the Lua handle, its slot in the caller's table and in the
registry). glibc keeps freed memory in its heap: after a crowd of at least 10 000 calls the
delegator calls \`malloc_trim(0)\` once they are all collected.

| build | RSS idle | RSS peak | RSS after | bytes per call in flight | CPU s answering |
| --- | --- | --- | --- | --- | --- |
$(for i in "${!AB_BUILDS[@]}"; do mem_row "${AB_LABELS[$i]}" "ab$i"; done
  mem_row "this tree" a)
EOF
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
(\`bench/spin_worker.lua\`), on a host as shipped (a timer signal sets the hook on a task that
ran a whole 20 ms tick, once per tick) and on one run with \`AMQP_DELEGATE_KEEPALIVE=0\` (no
hook), called in turns, median of $KEEPALIVE_RUNS calls each.

| time per loop iteration | hook on | AMQP_DELEGATE_KEEPALIVE=0 | on/off |
| --- | --- | --- | --- |
| ns, the task's CPU time (os.clock) | $(num "${R[ka_on_ns]:-}" "%.3f") | $(num "${R[ka_off_ns]:-}" "%.3f") | $(ratio3 "${R[ka_on_ns]:-}" "${R[ka_off_ns]:-}") |
| ns, wall clock | $(num "${R[ka_on_wall_ns]:-}" "%.3f") | $(num "${R[ka_off_wall_ns]:-}" "%.3f") | $(ratio3 "${R[ka_on_wall_ns]:-}" "${R[ka_off_wall_ns]:-}") |

While any count hook is set, Lua 5.4 sends every instruction through its hook check
(\`luaG_traceexec\`, which counts down to the next call), whatever the count: the cost is paid on
every instruction, not at the clock reads. (The same loop in plain \`lua5.4\` with
\`debug.sethook(f, "", 10000)\` runs about 2x slower here; so did a host task while the hook
stayed on every thread: 1.9x in bench/RESULTS-by-revision.md.)
EOF
}

cl_row() { # T metric fmt key
    local T=$1 metric=$2 fmt=$3 key=$4
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$T" "$metric" \
        "$(num "${R[cl.$T.a.$key]:-}" "$fmt")" "$(num "${R[cl.$T.c.$key]:-}" "$fmt")" \
        "$(num "${R[cl.$T.g.$key]:-}" "$fmt")" "$(num "${R[cl.$T.d.$key]:-}" "$fmt")" \
        "$(ratio "${R[cl.$T.a.$key]:-}" "${R[cl.$T.c.$key]:-}")" "$(ratio "${R[cl.$T.a.$key]:-}" "${R[cl.$T.g.$key]:-}")" \
        "$(ratio "${R[cl.$T.a.$key]:-}" "${R[cl.$T.d.$key]:-}")"
}
cl_ceiling_row() { # T: the calls/s the machine's CPUs allow at each peer's cluster CPU per call
    local T=$1 p
    printf '| %s | ceiling calls/s (CPUs / nodes µs) ' "$T"
    for p in a c g d; do printf '| %s ' "$(num "$(ceiling "${R[cl.$T.$p.pipe_bcpu_us]:-}")" "%.0f")"; done
    printf '| | | |\n'
}
qc_row() { # metric key: quorum / classic per peer
    printf '| %s | %s | %s | %s |\n' "$1" \
        "$(ratio "${R[cl.quorum.a.$2]:-}" "${R[cl.classic.a.$2]:-}")" \
        "$(ratio "${R[cl.quorum.c.$2]:-}" "${R[cl.classic.c.$2]:-}")" \
        "$(ratio "${R[cl.quorum.d.$2]:-}" "${R[cl.classic.d.$2]:-}")"
}
report_cluster() {
    if [ "$CLUSTER" = 0 ]; then
        printf '\n## Cluster\n\nSkipped (BENCH_CLUSTER=0).\n'
        return 0
    fi
    local line
    cat <<EOF

## Cluster (3 RabbitMQ nodes on loopback, scripts/cluster.sh)

Started in ${R[cl.start_s]:-?} s. One queue name per queue type (\`bench_cluster_classic\`: the Node
protocol's transient classic queue; \`bench_cluster_quorum\`: quorum), one worker on it at a time.
**(a)** ours: \`lua_bench.lua\` given the three URLs → \`amqp-delegate run --url URLS\` (concurrency
$DEPTH; \`AMQP_DELEGATE_QUEUE_TYPE=quorum\` for quorum), publisher confirms on (as shipped);
**(c)** bare rabbitmq-c (\`bare_roundtrip\`, \`BARE_QUEUE_TYPE=quorum\` for quorum), no confirms;
**(g)** bare rabbitmq-c asking what ours asks (\`BARE_GUARANTEES=1\`: confirms on both sides, the
ack after the reply's confirm, mandatory, expiration, an x-deadline header);
**(d)** amqplib written well (\`bench/node_rpc.js\`: one exclusive server-named reply queue,
correlation ids in a Map, \`noDelay: true\`, worker prefetch $DEPTH), no confirms.
Each round runs (a) first; its processes choose their node (the URL list is shuffled per process),
and (c) and (d) then put their worker and their client on the same nodes (found with ss).
Medians of $CL_REPEAT rounds; per measurement $CL_CALLS sequential or $CL_PIPE_CALLS pipelined calls
($DEPTH in flight) after $CL_WARMUP warm-up calls, at most $CL_MAX_SECONDS s.

| queue | metric | (a) ours | (c) bare C | (g) bare C, our guarantees | (d) amqplib | (a)/(c) | (a)/(g) | (a)/(d) |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
$(for T in classic quorum; do
    cl_row $T "sequential calls/s" "%.0f" seq_cps
    cl_row $T "sequential p50 ms" "%.3f" seq_p50_ms
    cl_row $T "sequential p99 ms" "%.3f" seq_p99_ms
    cl_row $T "pipelined calls/s ($DEPTH in flight)" "%.0f" pipe_cps
    cl_row $T "pipelined: delegator CPU µs per call" "%.1f" pipe_cpu_us
    cl_row $T "pipelined: the 3 nodes' CPU µs per call" "%.1f" pipe_bcpu_us
    cl_ceiling_row $T
done)

"The 3 nodes' CPU": the three Erlang VMs' CPU time over each pipelined run (warm-up calls
included), per call; the ceiling is $(nproc) CPUs divided by it, the calls/s no client could pass
with the nodes doing that much per call.

| quorum / classic | (a) ours | (c) bare C | (d) amqplib |
| --- | --- | --- | --- |
$(qc_row "sequential calls/s" seq_cps)
$(qc_row "sequential p50 ms" seq_p50_ms)
$(qc_row "pipelined calls/s" pipe_cps)

Where the processes were (K: node K of the cluster):
$(for line in "${CL_TOPOLOGY[@]}"; do printf -- '- %s\n' "$line"; done)
EOF
    [ "$FAILOVER_ROUNDS" -gt 0 ] || return 0
    cat <<EOF

### Failover: node killed → first answer through another node

A host (\`amqp-delegate run --url URLS\`, quorum queue \`bench_failover\`, concurrency 1) and a
delegator (\`bench/failover_client.lua\`: sequential calls with \`{retry = 2, timeout = 30}\`, each
answer timestamped) run on. Rounds 1..$FAILOVER_ROUNDS kill (\`cluster.sh kill\`: SIGKILL) the node
holding the host's connection, the delegator being on another node (a new delegator process is
started until it is); round D kills the delegator's node while it leads the quorum queue. The time
runs from the VM's death (polled every 10 ms) to the first answer the delegator got after it; the
node is restarted after that answer, or after $FAILOVER_WAIT s without one.

| round | node killed | worker's node | delegator's node | quorum leader | death → first answer (s) | failed calls meanwhile |
| --- | --- | --- | --- | --- | --- | --- |
$(for line in "${FAILOVER[@]}"; do IFS='|' read -r f kk kw kd kl secs errors <<<"$line"; printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$f" "$kk" "$kw" "$kd" "$kl" "$secs" "$errors"; done)

Rounds 1..$FAILOVER_ROUNDS (the worker's node): median **$(num "${R[fo.median]:-}" "%.3f") s** (min $(num "${R[fo.min]:-}" "%.3f"), max $(num "${R[fo.max]:-}" "%.3f")) over ${R[fo.count]:-0} kills.
Calls made: ${R[fo.calls]:-?} (by ${R[fo.clients]:-?} delegator processes); failed: ${R[fo.errors]:-?}; re-sent (\`retry\`): ${R[fo.retried]:-?}; second replies dropped: ${R[fo.unknown_replies]:-?}.
EOF
}

report > "$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
cat "$RESULTS"
log "results written to ${RESULTS#"$ROOT"/}"
