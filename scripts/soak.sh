#!/usr/bin/env bash
# The fault soak:  bash scripts/soak.sh [SECONDS]      (default 600, or $SOAK_SECONDS)
#
# A script that prints figures, not a timed test. For SECONDS, SOAK_DRIVERS delegator processes
# (lua5.4 scripts/soak/driver.lua) each keep SOAK_INFLIGHT calls in flight to SOAK_WORKERS host
# processes (amqp-delegate run scripts/soak/worker.lua, worker "soak_echo"), while
#   * the broker closes every connection (rabbitmqctl close_all_connections) every
#     SOAK_CLOSE_MIN..SOAK_CLOSE_MAX seconds (random),
#   * every ~SOAK_KILL_EVERY seconds one worker host is killed with SIGKILL and a new one
#     started (host w0 is never killed when there are two or more, so that one host lives
#     through the whole soak and its RSS can be read over it).
# Then the faults stop for SOAK_QUIET_SECONDS (the calls go on: the clients must have
# recovered), the drivers stop sending, let every call in flight end, and report.
# Each driver checks every result is the echo of its own call's id, and that every call ends
# exactly once (result or error). The RSS of every host and driver is sampled every
# SOAK_SAMPLE_EVERY seconds. At the end it prints a table: faults injected, calls by outcome
# and error code, wrong results, calls that ended twice or never, process crashes (a host or
# driver that died other than by our SIGKILL, or whose log shows a sanitizer report or a
# segfault), RSS first/last/max. Exit status 0 only when wrong, twice, never and crashes are
# all 0 (and no driver got stuck, and calls succeeded again once the faults stopped).
#
# It builds nothing: it runs $AMQP_DELEGATE_BUILD (default build/) as it is. It starts a
# private RabbitMQ node (scripts/rabbitmq.sh) in a temp folder, unless SOAK_BROKER_DIR names
# the folder of a node started with `scripts/rabbitmq.sh start DIR` (AMQP_URL, else DIR/env,
# gives its URL); close_all_connections then closes every connection of that node's vhost /.
# Everything it started is stopped on exit, Ctrl-C included. Logs stay in the temp folder
# when the run fails (or with SOAK_KEEP=1).
#
# Knobs (environment):
#   SOAK_SECONDS=600        seconds of faults (the first argument wins)
#   SOAK_WORKERS=3          worker hosts              SOAK_DRIVERS=3       delegator processes
#   SOAK_INFLIGHT=16        calls in flight per driver SOAK_TIMEOUT=5      call timeout (s)
#   SOAK_CONCURRENCY=8      tasks per worker host     SOAK_SLEEP_MS=5      a task's longest sleep
#   SOAK_SLEEP_PERCENT=30   share of the tasks that sleep (above SOAK_TIMEOUT: timeouts, late replies)
#   SOAK_CLOSE_MIN=2 SOAK_CLOSE_MAX=6   seconds between connection closes (0 0: none)
#   SOAK_KILL_EVERY=15      seconds between worker kills (about; 0: none)
#   SOAK_SAMPLE_EVERY=10    RSS sampling period       SOAK_PROGRESS_EVERY=30  progress lines
#   SOAK_QUIET_SECONDS=10   calls without faults at the end
#   SOAK_HOST_LOG_LEVEL=info  SOAK_LOG_LEVEL=warn (drivers)
#   AMQP_DELEGATE_BUILD=build  SOAK_LUA=lua5.4  SOAK_BROKER_DIR=  SOAK_KEEP=0
#   SOAK_RESULTS=FILE       also write the table there
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"

log() { printf 'soak: %s\n' "$*" >&2; }
die() { printf 'soak: error: %s\n' "$*" >&2; exit 2; }

DURATION=${1:-${SOAK_SECONDS:-600}}
WORKERS=${SOAK_WORKERS:-3}
DRIVERS=${SOAK_DRIVERS:-3}
INFLIGHT=${SOAK_INFLIGHT:-16}
TIMEOUT=${SOAK_TIMEOUT:-5}
CONCURRENCY=${SOAK_CONCURRENCY:-8}
SLEEP_MS=${SOAK_SLEEP_MS:-5}
CLOSE_MIN=${SOAK_CLOSE_MIN:-2}
CLOSE_MAX=${SOAK_CLOSE_MAX:-6}
KILL_EVERY=${SOAK_KILL_EVERY:-15}
SAMPLE_EVERY=${SOAK_SAMPLE_EVERY:-10}
PROGRESS_EVERY=${SOAK_PROGRESS_EVERY:-30}
QUIET=${SOAK_QUIET_SECONDS:-10}
HOST_LOG_LEVEL=${SOAK_HOST_LOG_LEVEL:-info}
DRIVER_LOG_LEVEL=${SOAK_LOG_LEVEL:-warn}
LUA=${SOAK_LUA:-lua5.4}
BUILD=${AMQP_DELEGATE_BUILD:-$ROOT/build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac

is_int() { [[ $1 =~ ^[0-9]+$ ]]; }
for v in DURATION WORKERS DRIVERS INFLIGHT CONCURRENCY SLEEP_MS CLOSE_MIN CLOSE_MAX KILL_EVERY \
    SAMPLE_EVERY PROGRESS_EVERY QUIET; do
    is_int "${!v}" || die "$v must be a whole number, not '${!v}' (usage: bash scripts/soak.sh [SECONDS])"
done
[[ $TIMEOUT =~ ^[0-9]+([.][0-9]+)?$ ]] || die "SOAK_TIMEOUT must be a number of seconds"
[ "$WORKERS" -ge 1 ] && [ "$DRIVERS" -ge 1 ] && [ "$INFLIGHT" -ge 1 ] || die "SOAK_WORKERS, SOAK_DRIVERS and SOAK_INFLIGHT must be at least 1"
[ "$CLOSE_MAX" -ge "$CLOSE_MIN" ] || die "SOAK_CLOSE_MAX must be at least SOAK_CLOSE_MIN"
[ "$SAMPLE_EVERY" -ge 1 ] || SAMPLE_EVERY=10
[ "$PROGRESS_EVERY" -ge 1 ] || PROGRESS_EVERY=30
TIMEOUT_S=${TIMEOUT%%.*}
DRAIN=$(( 2 * TIMEOUT_S + 12 ))          # what the drivers may take to end their calls

HOST=$BUILD/amqp-delegate
MODULE=$BUILD/amqp_delegate.so
[ -x "$HOST" ] && [ -f "$MODULE" ] || die "no build in $BUILD ($HOST and $MODULE are needed; it builds nothing: cmake -S . -B build && cmake --build build, or set AMQP_DELEGATE_BUILD)"
command -v "$LUA" >/dev/null || die "$LUA not found"
WORKER_FILE=$ROOT/scripts/soak/worker.lua
DRIVER_FILE=$ROOT/scripts/soak/driver.lua
# a sanitizer build (-DAMQP_DELEGATE_SANITIZE=ON): lua5.4 must load the ASan runtime first to
# load our module; leaks of the drivers' Lua state at exit are not what this soak looks at
DRIVER_ENV=()
ASAN_RT=$(ldd "$MODULE" 2>/dev/null | awk '$1 ~ /^libasan\.so/ {print $3}' || true)
if [ -n "$ASAN_RT" ]; then
    DRIVER_ENV=(LD_PRELOAD="$ASAN_RT" ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}")
fi
[ -f "$WORKER_FILE" ] && [ -f "$DRIVER_FILE" ] || die "scripts/soak/worker.lua or driver.lua is missing"

# ------------------------------------------------------------------ state and cleanup
WORK=$(mktemp -d /tmp/amqp-delegate-soak.XXXXXX)
chmod 755 "$WORK"
OWN_BROKER=""          # the folder of the node we started (stopped on exit)
BROKER_DIR=""
PHASE=setup            # setup, run, quiet, drain, stop, report
CLOSE_PID=""           # a rabbitmqctl close_all_connections running in the background
VERDICT_OK=0
declare -a WPID=() WGEN=() WNAME=() WREADY=() WSTART=()
declare -a DPID=() DGEN=() DNAME=()
declare -A CRASH=()    # instance name -> why (one entry per process instance)
declare -A START_FAIL=()  # instance name -> why (a host that exited before "ready")
CRASH_ORDER=()
CLOSES=0 CLOSE_FAILS=0 KILLS=0 STARTS=0 START_FAILS=0 READY_MAX_MS=0 READY_LATE=0
STUCK=0 STOP_HANGS=0
T0_MS=0

now_ms() { local t=${EPOCHREALTIME/[.,]/}; NOW=$(( t / 1000 )); }

stop_pid() { # pid [grace seconds]: TERM, wait, then KILL; reaps it
    local pid=$1 grace=${2:-5} i
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    local pid
    [ -n "$CLOSE_PID" ] && kill -TERM -- "-$CLOSE_PID" 2>/dev/null
    if [ "$PHASE" != report ] && [ "$PHASE" != setup ]; then
        log "interrupted in phase $PHASE: stopping everything"
    fi
    for pid in "${DPID[@]}" "${WPID[@]}"; do [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; done
    for pid in "${DPID[@]}" "${WPID[@]}"; do stop_pid "$pid" 5; done
    case $PHASE in run | quiet | drain) progress ;; esac   # the counts so far
    if [ -n "$OWN_BROKER" ]; then
        # interrupted while it started: its env is still aside, and stop needs it
        [ -f "$OWN_BROKER/env" ] || mv -f "$OWN_BROKER/env.tmp" "$OWN_BROKER/env" 2>/dev/null
        bash "$ROOT/scripts/rabbitmq.sh" stop "$OWN_BROKER" >/dev/null 2>&1 \
            || log "could not stop the broker in $OWN_BROKER"
    fi
    if [ $status -eq 0 ] && [ "$VERDICT_OK" = 1 ] && [ "${SOAK_KEEP:-0}" != 1 ]; then
        rm -rf "$WORK"
    else
        log "logs kept in $WORK"
    fi
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ broker
if [ -n "${SOAK_BROKER_DIR:-}" ]; then
    BROKER_DIR=$(cd "$SOAK_BROKER_DIR" && pwd -P) || die "SOAK_BROKER_DIR $SOAK_BROKER_DIR not found"
    bash "$ROOT/scripts/rabbitmq.sh" status "$BROKER_DIR" >/dev/null 2>&1 \
        || die "no running node in $BROKER_DIR (scripts/rabbitmq.sh start $BROKER_DIR)"
    if [ -n "${AMQP_URL:-}" ]; then
        URL=$AMQP_URL
    else
        # shellcheck disable=SC1091
        URL=$(. "$BROKER_DIR/env" && echo "$AMQP_URL")
    fi
else
    [ -n "${AMQP_URL:-}" ] && log "AMQP_URL is ignored without SOAK_BROKER_DIR (the faults need rabbitmqctl on that node): starting a private node"
    BROKER_DIR=$WORK/rabbitmq
    mkdir -p "$BROKER_DIR"
    OWN_BROKER=$BROKER_DIR
    log "starting a private RabbitMQ node"
    bash "$ROOT/scripts/rabbitmq.sh" start "$BROKER_DIR" >/dev/null 2>"$WORK/rabbitmq-start.log" \
        || { cat "$WORK/rabbitmq-start.log" >&2; die "RabbitMQ did not start"; }
    # shellcheck disable=SC1091
    URL=$(. "$BROKER_DIR/env" && echo "$AMQP_URL")
fi
[ -n "$ASAN_RT" ] && log "sanitizer build: drivers run with LD_PRELOAD=$ASAN_RT"
log "broker: ${URL%%//*}//$(printf '%s' "${URL#*//}" | sed 's/:[^@]*@/:***@/') ($BROKER_DIR); build: $BUILD"

ctl() { bash "$ROOT/scripts/rabbitmq.sh" ctl "$BROKER_DIR" "$@"; }

# ------------------------------------------------------------------ processes
sig_name() { # exit status -> "status N" or "signal NAME"
    local st=$1
    if [ "$st" -gt 128 ] && [ "$st" -lt 160 ]; then
        echo "signal $(kill -l $((st - 128)) 2>/dev/null || echo $((st - 128)))"
    else
        echo "status $st"
    fi
}

record_crash() { # instance why
    if [ -z "${CRASH[$1]:-}" ]; then CRASH_ORDER+=("$1"); CRASH[$1]=$2; else CRASH[$1]+="; $2"; fi
    log "CRASH: $1: $2"
}

start_worker() { # slot
    local slot=$1 gen=$(( ${WGEN[$1]:-0} + 1 ))
    local name="w$slot.$gen"
    WGEN[$slot]=$gen
    WNAME[$slot]=$name
    WREADY[$slot]=0
    now_ms; WSTART[$slot]=$NOW
    SOAK_WORKER_TAG=$name SOAK_CONCURRENCY=$CONCURRENCY SOAK_SLEEP_MS=$SLEEP_MS \
        setsid "$HOST" run --url "$URL" --log-level "$HOST_LOG_LEVEL" "$WORKER_FILE" \
        > "$WORK/$name.out" 2> "$WORK/$name.log" < /dev/null &
    WPID[$slot]=$!
    STARTS=$((STARTS + 1))
}

worker_ready() { grep -q '^ready' "$WORK/${WNAME[$1]}.out" 2>/dev/null; }

start_driver() { # index
    local i=$1 gen=$(( ${DGEN[$1]:-0} + 1 ))
    local name="d$i"
    [ "$gen" -gt 1 ] && name="d$i.$gen"
    DGEN[$i]=$gen
    DNAME[$i]=$name
    LUA_CPATH="$BUILD/?.so;;" SOAK_URL=$URL SOAK_DRIVER=$name SOAK_INFLIGHT=$INFLIGHT \
        SOAK_TIMEOUT=$TIMEOUT SOAK_DRAIN_SECONDS=$DRAIN SOAK_STATUS="$WORK/$name.status" \
        SOAK_STOP_FILE="$WORK/stop" SOAK_QUIET_FILE="$WORK/quiet" SOAK_LOG_LEVEL=$DRIVER_LOG_LEVEL \
        setsid env "${DRIVER_ENV[@]}" "$LUA" "$DRIVER_FILE" > "$WORK/$name.out" 2> "$WORK/$name.log" < /dev/null &
    DPID[$i]=$!
}

status_of() { # status-file key -> value (empty when absent)
    [ -f "$1" ] || return 0
    awk -v k="$2" '{ for (i = 1; i <= NF; i++) if (index($i, k "=") == 1) { print substr($i, length(k) + 2); exit } }' "$1" || true
}

all_status() { # every driver instance's last status line, one key=value a line
    local f
    for f in "$WORK"/*.status; do [ -f "$f" ] && tr ' ' '\n' < "$f"; done
    return 0
}

sum_key() { # key -> sum over every driver instance's last status line
    all_status | awk -F= -v k="$1" '$1 == k {s += $2} END {print s + 0}'
}

judge_worker_exit() { # slot pid status how: a failed start, or a crash
    local slot=$1 pid=$2 st=$3 name=${WNAME[$1]}
    if [ "${WREADY[$slot]}" = 0 ] && [ "$st" -ge 1 ] && [ "$st" -le 127 ] && ! worker_ready "$slot"; then
        START_FAILS=$((START_FAILS + 1))
        START_FAIL[$name]="exited with $(sig_name "$st") before ready: $(tail -n 1 "$WORK/$name.log" 2>/dev/null)"
        log "worker host $name failed to start ($(sig_name "$st"))"
    else
        record_crash "$name" "worker host (pid $pid) exited with $(sig_name "$st") $4"
    fi
    return 0
}

# A host that died by itself: a crash (or a failed start, when it exited with an error
# before "ready": the broker closed its connection while it started). Restarted while the
# faults go on.
check_workers() {
    local slot pid st=0 name
    for ((slot = 0; slot < WORKERS; slot++)); do
        pid=${WPID[$slot]}
        name=${WNAME[$slot]}
        [ -n "$pid" ] || continue
        if [ "${WREADY[$slot]}" = 0 ] && worker_ready "$slot"; then
            WREADY[$slot]=1
            now_ms
            local took=$(( NOW - WSTART[slot] ))
            [ $took -gt $READY_MAX_MS ] && READY_MAX_MS=$took
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            st=0; wait "$pid" 2>/dev/null || st=$?
            judge_worker_exit "$slot" "$pid" "$st" "by itself"
            if [ "$PHASE" = run ] || [ "$PHASE" = quiet ] || [ "$PHASE" = setup ]; then start_worker "$slot"; else WPID[$slot]=""; fi
        elif [ "${WREADY[$slot]}" = 0 ] && [ $(( NOW - WSTART[slot] )) -gt 30000 ] && [ "${WLATE[$slot]:-}" != "$name" ]; then
            READY_LATE=$((READY_LATE + 1)); WLATE[$slot]=$name
            log "worker host $name is not ready after 30 s"
        fi
    done
    return 0
}
declare -a WLATE=()

check_drivers() {
    local i pid st=0 name
    for ((i = 1; i <= DRIVERS; i++)); do
        pid=${DPID[$i]}
        [ -n "$pid" ] || continue
        if ! kill -0 "$pid" 2>/dev/null; then
            name=${DNAME[$i]}
            st=0; wait "$pid" 2>/dev/null || st=$?
            DPID[$i]=""
            record_crash "$name" "driver (pid $pid) exited with $(sig_name "$st") before it was asked to stop"
            if [ "$PHASE" = run ] || [ "$PHASE" = quiet ]; then start_driver "$i"; fi
        fi
    done
    return 0
}

kill_worker() {
    local slot=0
    if [ "$WORKERS" -ge 2 ]; then slot=$(( 1 + RANDOM % (WORKERS - 1) )); fi
    local pid=${WPID[$slot]} st=0
    kill -0 "$pid" 2>/dev/null || return 0        # died meanwhile: check_workers sees it
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || st=$?
    # not 137: it was gone before our signal
    [ "$st" = 137 ] || judge_worker_exit "$slot" "$pid" "$st" "just before our SIGKILL"
    KILLS=$((KILLS + 1))
    start_worker "$slot"
}

# rabbitmqctl takes about a second: it runs in the background (its own process group, so
# that cleanup can end it), and the next close is due CLOSE_MIN..CLOSE_MAX s after this one
# started (or once it finished, when it takes longer).
close_connections() {
    setsid bash "$ROOT/scripts/rabbitmq.sh" ctl "$BROKER_DIR" -q close_all_connections "soak" \
        >> "$WORK/faults.log" 2>&1 < /dev/null &
    CLOSE_PID=$!
}
reap_close() { # counts the close that ran in the background, once it ended
    [ -n "$CLOSE_PID" ] || return 0
    kill -0 "$CLOSE_PID" 2>/dev/null && return 0
    local st=0
    wait "$CLOSE_PID" 2>/dev/null || st=$?
    CLOSE_PID=""
    if [ "$st" = 0 ]; then CLOSES=$((CLOSES + 1)); else CLOSE_FAILS=$((CLOSE_FAILS + 1)); fi
    return 0
}

rss_kib() { # pid -> VmRSS in KiB (builtins only), empty when gone
    local k n _
    while read -r k n _; do
        if [ "$k" = VmRSS: ]; then echo "$n"; return 0; fi
    done < "/proc/$1/status" 2>/dev/null || true
}

sample_rss() {
    now_ms
    local t=$(( (NOW - T0_MS) / 1000 )) slot i v kind
    for ((slot = 0; slot < WORKERS; slot++)); do
        [ -n "${WPID[$slot]}" ] || continue
        v=$(rss_kib "${WPID[$slot]}")
        [ -n "$v" ] || continue
        kind=restarted
        [ "$slot" = 0 ] && [ "${WGEN[0]}" = 1 ] && kind=w0
        printf '%s\t%s\t%s\t%s\n' "$t" "$kind" "${WNAME[$slot]}" "$v" >> "$WORK/rss.tsv"
    done
    for ((i = 1; i <= DRIVERS; i++)); do
        [ -n "${DPID[$i]}" ] || continue
        v=$(rss_kib "${DPID[$i]}")
        [ -n "$v" ] && printf '%s\t%s\t%s\t%s\n' "$t" "driver" "${DNAME[$i]}" "$v" >> "$WORK/rss.tsv"
    done
    return 0
}

progress() {
    now_ms
    local i f age
    for ((i = 1; i <= DRIVERS; i++)); do
        f=$WORK/${DNAME[$i]}.status
        [ -f "$f" ] || continue
        age=$(( ${EPOCHREALTIME%%[.,]*} - $(stat -c %Y "$f") ))
        [ "$age" -gt 30 ] && log "driver ${DNAME[$i]} has not updated its counts for $age s (stuck in a wait?)"
    done
    log "$(( (NOW - T0_MS) / 1000 ))/$DURATION s: $CLOSES closes, $KILLS kills; calls sent $(sum_key sent), ok $(sum_key ok), failed $(sum_key failed), refused $(sum_key refused), wrong $(sum_key wrong), twice $(sum_key twice); crashes ${#CRASH_ORDER[@]}"
}

# ------------------------------------------------------------------ start
log "starting $WORKERS worker hosts (concurrency $CONCURRENCY)"
for ((slot = 0; slot < WORKERS; slot++)); do start_worker "$slot"; done
deadline=$((SECONDS + 30))
for ((slot = 0; slot < WORKERS; slot++)); do
    until worker_ready "$slot"; do
        kill -0 "${WPID[$slot]}" 2>/dev/null || { cat "$WORK/${WNAME[$slot]}.log" >&2; die "worker host ${WNAME[$slot]} exited before ready"; }
        [ $SECONDS -lt $deadline ] || die "worker host ${WNAME[$slot]} not ready after 30 s"
        sleep 0.1
    done
    WREADY[$slot]=1
done
log "starting $DRIVERS drivers ($INFLIGHT calls in flight each, timeout $TIMEOUT s)"
for ((i = 1; i <= DRIVERS; i++)); do start_driver "$i"; done
deadline=$((SECONDS + 60))
for ((i = 1; i <= DRIVERS; i++)); do
    until [ "$(status_of "$WORK/${DNAME[$i]}.status" ok)" -gt 0 ] 2>/dev/null; do
        kill -0 "${DPID[$i]}" 2>/dev/null || { cat "$WORK/${DNAME[$i]}.log" >&2; die "driver ${DNAME[$i]} exited at start"; }
        [ $SECONDS -lt $deadline ] || die "driver ${DNAME[$i]} got no result in 60 s (see $WORK/${DNAME[$i]}.log)"
        sleep 0.2
    done
done

# ------------------------------------------------------------------ faults
rand_ms() { # lo_s hi_s -> random milliseconds in [lo, hi] seconds
    local span=$(( ($2 - $1) * 1000 ))
    echo $(( $1 * 1000 + (span > 0 ? (RANDOM * 32768 + RANDOM) % (span + 1) : 0) ))
}
PHASE=run
now_ms; T0_MS=$NOW
END_MS=$(( T0_MS + DURATION * 1000 ))
NEXT_CLOSE=$(( CLOSE_MAX > 0 ? T0_MS + $(rand_ms "$CLOSE_MIN" "$CLOSE_MAX") : 0 ))
NEXT_KILL=$(( KILL_EVERY > 0 ? T0_MS + KILL_EVERY * 1000 : 0 ))
NEXT_SAMPLE=$(( T0_MS + SAMPLE_EVERY * 1000 ))
NEXT_PROGRESS=$(( T0_MS + PROGRESS_EVERY * 1000 ))
log "faults for $DURATION s: connections closed every $CLOSE_MIN-$CLOSE_MAX s, a worker host killed every ~$KILL_EVERY s"
while :; do
    now_ms
    [ $NOW -lt $END_MS ] || break
    reap_close
    if [ $NEXT_CLOSE -gt 0 ] && [ $NOW -ge $NEXT_CLOSE ] && [ -z "$CLOSE_PID" ]; then
        close_connections
        NEXT_CLOSE=$(( NOW + $(rand_ms "$CLOSE_MIN" "$CLOSE_MAX") ))
    fi
    if [ $NEXT_KILL -gt 0 ] && [ $NOW -ge $NEXT_KILL ]; then
        kill_worker
        now_ms; NEXT_KILL=$(( NOW + KILL_EVERY * 750 + (RANDOM * 32768 + RANDOM) % (KILL_EVERY * 500 + 1) ))
    fi
    check_workers
    check_drivers
    if [ $NOW -ge $NEXT_SAMPLE ]; then sample_rss; NEXT_SAMPLE=$(( NEXT_SAMPLE + SAMPLE_EVERY * 1000 )); fi
    if [ $NOW -ge $NEXT_PROGRESS ]; then progress; NEXT_PROGRESS=$(( NEXT_PROGRESS + PROGRESS_EVERY * 1000 )); fi
    sleep 0.2
done
now_ms; FAULT_SECONDS=$(( (NOW - T0_MS) / 1000 ))
if [ -n "$CLOSE_PID" ]; then wait "$CLOSE_PID" 2>/dev/null || true; CLOSE_PID=""; CLOSES=$((CLOSES + 1)); fi
CLOSED=$(awk '/^Closed [0-9]+ connections/ {s += $2} END {print s + 0}' "$WORK/faults.log" 2>/dev/null || echo 0)

# ------------------------------------------------------------------ quiet, drain, stop
PHASE=quiet
log "faults over after $FAULT_SECONDS s; $QUIET s of calls without faults"
: > "$WORK/quiet"
QUIET_END=$(( SECONDS + QUIET ))
while [ $SECONDS -lt $QUIET_END ]; do
    now_ms
    check_workers
    check_drivers
    sleep 0.2
done
sample_rss
# what the broker sees now: every host and driver connected again, every host consuming
CONNECTIONS=$(ctl -q list_connections --no-table-headers name 2>/dev/null | grep -c . || true)
QUEUE_LINE=$(ctl -q list_queues --no-table-headers name messages_ready messages_unacknowledged consumers 2>/dev/null \
    | awk -F'\t' '$1 == "soak_echo" {printf "%s ready, %s unacked, %s consumers", $2, $3, $4}' || true)

PHASE=drain
log "drivers stop sending; the calls in flight end (up to $DRAIN s)"
: > "$WORK/stop"
DRAIN_T0=$SECONDS
deadline=$(( SECONDS + DRAIN + 20 ))
for ((i = 1; i <= DRIVERS; i++)); do
    pid=${DPID[$i]}
    [ -n "$pid" ] || continue
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    name=${DNAME[$i]}
    if kill -0 "$pid" 2>/dev/null; then
        STUCK=$((STUCK + 1))
        record_crash "$name" "driver (pid $pid) still running $((DRAIN + 20)) s after it was asked to stop (stuck in a wait?): killed"
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    else
        st=0; wait "$pid" 2>/dev/null || st=$?
        if [ "$st" != 0 ]; then
            record_crash "$name" "driver (pid $pid) exited with $(sig_name "$st") while draining"
        elif [ "$(status_of "$WORK/$name.status" final)" != 1 ]; then
            record_crash "$name" "driver (pid $pid) exited 0 without its final line"
        fi
    fi
    DPID[$i]=""
done
DRAIN_SECONDS=$(( SECONDS - DRAIN_T0 ))

PHASE=stop
log "stopping the worker hosts (SIGTERM)"
for ((slot = 0; slot < WORKERS; slot++)); do
    pid=${WPID[$slot]}
    [ -n "$pid" ] || continue
    kill -TERM "$pid" 2>/dev/null || true
done
for ((slot = 0; slot < WORKERS; slot++)); do
    pid=${WPID[$slot]}
    [ -n "$pid" ] || continue
    name=${WNAME[$slot]}
    for ((k = 0; k < 150; k++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        STOP_HANGS=$((STOP_HANGS + 1))
        record_crash "$name" "worker host (pid $pid) did not stop 15 s after SIGTERM: killed"
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    else
        st=0; wait "$pid" 2>/dev/null || st=$?
        [ "$st" = 0 ] || judge_worker_exit "$slot" "$pid" "$st" "on SIGTERM"
    fi
    WPID[$slot]=""
done

# sanitizer reports, segfaults, aborts in any log (one crash per process instance)
CRASH_PATTERN='AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:|[Ss]egmentation fault|segfault|SIGSEGV|Assertion .* failed|double free|free\(\): invalid|corrupted (size|double-linked)|malloc\(\):|stack smashing|panic:'
for f in "$WORK"/w*.log "$WORK"/d*.log; do
    [ -f "$f" ] || continue
    if hit=$(grep -E -m 1 "$CRASH_PATTERN" "$f"); then
        name=$(basename "$f" .log)
        record_crash "$name" "its log says: $hit"
    fi
done
PHASE=report

# ------------------------------------------------------------------ report
rss_row() { # label awk-filter -> "first / last / max (n samples)"
    [ -f "$WORK/rss.tsv" ] || { echo "n/a"; return; }
    awk -F'\t' "$1"' { if (n == 0) first = $4; last = $4; if ($4 > max) max = $4; n++ }
        END { if (n == 0) { print "n/a"; exit }
              printf "%.1f / %.1f / %.1f MiB (%d samples)", first / 1024, last / 1024, max / 1024, n }' \
        "$WORK/rss.tsv"
}

SENT=$(sum_key sent) OK=$(sum_key ok) FAILED=$(sum_key failed) REFUSED=$(sum_key refused)
WRONG=$(sum_key wrong) TWICE=$(sum_key twice) NEVER=$(sum_key never)
OK_QUIET=$(sum_key quiet_ok) FAILED_QUIET=$(sum_key quiet_failed) REFUSED_QUIET=$(sum_key quiet_refused)
UNKNOWN=$(sum_key core_unknown_replies) RECHECKED=$(sum_key rechecked)
NCRASH=${#CRASH_ORDER[@]}
codes() { # prefix -> the codes seen, one per line
    all_status | sed -n "s/^$1_\([A-Za-z0-9_]*\)=.*/\1/p" | sort -u
}
partial=""
for f in "$WORK"/*.status; do
    [ "$(status_of "$f" final)" = 1 ] || partial+=" $(basename "$f" .status)"
done

source_revision() { # the commit the build was made from (CMakeCache.txt names the source folder)
    local src rev
    src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$BUILD/CMakeCache.txt" 2>/dev/null || true)
    [ -n "$src" ] || src=$ROOT
    rev=$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo '?')
    [ -n "$(git -C "$src" status --porcelain --untracked-files=no 2>/dev/null)" ] && rev+=" + local changes"
    echo "$src at $rev"
}

report() {
    local code
    echo
    echo "## Fault soak ($(date -u '+%Y-%m-%d %H:%M UTC'); build $BUILD of $(source_revision))"
    echo
    echo "| figure | value |"
    echo "| --- | --- |"
    echo "| faults for | $FAULT_SECONDS s, then $QUIET s without faults, then a drain of $DRAIN_SECONDS s |"
    echo "| load | $DRIVERS drivers x $INFLIGHT calls in flight (timeout $TIMEOUT s) -> $WORKERS worker hosts (concurrency $CONCURRENCY) |"
    echo "| connection closes (close_all_connections) | $CLOSES, $CLOSED connections closed$([ "$CLOSE_FAILS" -gt 0 ] && echo " ($CLOSE_FAILS rabbitmqctl failures)") |"
    echo "| worker hosts killed (SIGKILL) | $KILLS ($STARTS host processes started in all; slowest restart to ready $READY_MAX_MS ms$([ "$READY_LATE" -gt 0 ] && echo "; $READY_LATE not ready after 30 s")) |"
    [ "$START_FAILS" -gt 0 ] && echo "| hosts that exited with an error before ready (restarted) | $START_FAILS |"
    echo "| calls sent | $SENT |"
    echo "| ended with the right result | $OK |"
    echo "| ended with an error | $FAILED |"
    for code in $(codes err); do echo "| &nbsp;&nbsp;$code | $(sum_key "err_$code") |"; done
    echo "| refused by send (not sent) | $REFUSED |"
    for code in $(codes refused); do echo "| &nbsp;&nbsp;$code | $(sum_key "refused_$code") |"; done
    echo "| after the faults: ok / error / refused | $OK_QUIET / $FAILED_QUIET / $REFUSED_QUIET |"
    echo "| late replies dropped (unknown_replies) | $UNKNOWN |"
    echo "| **wrong results** | **$WRONG** |"
    echo "| **ended twice** | **$TWICE** ($RECHECKED ended handles looked at again) |"
    echo "| **never ended** | **$NEVER** |"
    echo "| **process crashes** | **$NCRASH**$([ "$STUCK" -gt 0 ] && echo " ($STUCK drivers stuck)")$([ "$STOP_HANGS" -gt 0 ] && echo " ($STOP_HANGS hosts hung at stop)") |"
    echo "| broker at the end of the quiet time | ${CONNECTIONS:-?} connections (expected $((WORKERS + DRIVERS))); soak_echo: ${QUEUE_LINE:-?} |"
    echo "| RSS host w0 (never killed): first / last / max | $(rss_row '$2 == "w0"') |"
    echo "| RSS restarted hosts: first / last / max | $(rss_row '$2 == "restarted"') |"
    for ((i = 1; i <= DRIVERS; i++)); do
        echo "| RSS driver d$i: first / last / max | $(rss_row "\$3 == \"d$i\"") |"
    done
    echo
    [ -n "$partial" ] && echo "No final line from${partial}: their counts are those of their last periodic line."
    if [ "$NCRASH" -gt 0 ]; then
        echo "Crashes:"
        local n
        for n in "${CRASH_ORDER[@]}"; do echo "- $n: ${CRASH[$n]} (log: $WORK/$n.log)"; done
    fi
    if [ "$START_FAILS" -gt 0 ]; then
        echo "Hosts that failed to start:"
        local n
        for n in "${!START_FAIL[@]}"; do echo "- $n: ${START_FAIL[$n]}"; done
    fi
    local why=()
    [ "$WRONG" = 0 ] || why+=("wrong results")
    [ "$TWICE" = 0 ] || why+=("calls ended twice")
    [ "$NEVER" = 0 ] || why+=("calls never ended")
    [ "$NCRASH" = 0 ] || why+=("process crashes")
    [ "$OK_QUIET" -gt 0 ] || why+=("no call succeeded once the faults stopped")
    if [ ${#why[@]} -eq 0 ]; then
        echo "PASS: every call ended exactly once, with its own result or an error; no crash."
    else
        local IFS=,
        echo "FAIL: ${why[*]}."
    fi
}

report > "$WORK/results.md"
cat "$WORK/results.md"
[ -n "${SOAK_RESULTS:-}" ] && cp "$WORK/results.md" "$SOAK_RESULTS"
if grep -q '^PASS' "$WORK/results.md"; then VERDICT_OK=1; exit 0; fi
exit 1
