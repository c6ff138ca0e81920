#!/usr/bin/env bash
# A private 3-node RabbitMQ cluster on 127.0.0.1 for tests, made of scripts/rabbitmq.sh nodes.
#
#   scripts/cluster.sh start DIR          start DIR/node1..3 in parallel, join 2 and 3 to node 1
#   scripts/cluster.sh stop DIR           stop the three nodes, wait until every VM has exited
#   scripts/cluster.sh kill DIR K         kill -9 node K's Erlang VM; returns once it is gone
#   scripts/cluster.sh restart DIR K      start node K again (same ports, data); waits for 3 running
#   scripts/cluster.sh stop-node DIR K    stop node K gracefully
#   scripts/cluster.sh leader DIR QUEUE   print K of the node leading quorum queue QUEUE (vhost /)
#   scripts/cluster.sh status DIR         print the running nodes, "K NODE URL" a line
#
# After start, DIR/env holds shell-sourceable lines: CLUSTER_URLS (comma-separated AMQP URLs,
# node 1 first), CLUSTER_SIZE, CLUSTER_DIR, CLUSTER_ENV (DIR/env itself), and for K = 1..3
# CLUSTER_URL_K, CLUSTER_PORT_K, CLUSTER_NODE_K (Erlang node name), CLUSTER_DIR_K (DIR/nodeK:
# a scripts/rabbitmq.sh node dir, so `scripts/rabbitmq.sh ctl|diag|status DIR/nodeK ...` work).
# All nodes share one cookie and one set of TLS files (DIR/nodeK/tls, AMQPS_PORT in its env).
#
# How: the ports of all three nodes are picked here at once (three rabbitmq.sh picking their own
# in parallel could draw the same one before any of them listens), written with one shared
# Erlang cookie and DIR/nodeK/advanced.config into each node dir; `rabbitmq.sh start` then
# starts a node on the ports its env names. Nodes 2 and 3 join node 1 with
# stop_app / join_cluster / start_app. `leader` exits 1, printing nothing, when the queue has no
# leader on a live node; `status` exits 1 when no node answers.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
RMQ_SH="$HERE/rabbitmq.sh"
# shellcheck source=lib/ports.sh
. "$HERE/lib/ports.sh"

N=3
START_TIMEOUT=${RABBITMQ_START_TIMEOUT:-90}
CLI_TIMEOUT=${CLUSTER_CLI_TIMEOUT:-60}

die() { echo "cluster.sh: error: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*" >&2; }

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 64
}

node_dir() { echo "$DIR/node$1"; }

rmq() { # rabbitmq.sh CMD DIR/nodeK ARGS... (bounded, so that a hung CLI cannot hang us)
    local cmd=$1 k=$2; shift 2
    timeout --kill-after=5 "$CLI_TIMEOUT" bash "$RMQ_SH" "$cmd" "$(node_dir "$k")" "$@"
}
ctl() { local k=$1; shift; rmq ctl "$k" "$@"; }

load_cluster() { # DIR -> DIR (absolute) and the CLUSTER_* globals from DIR/env
    [ -d "$1" ] || die "no such directory: $1"
    DIR=$(cd "$1" && pwd -P)
    [ -f "$DIR/env" ] || die "$DIR/env not found: no cluster was started in $DIR"
    # shellcheck disable=SC1091
    . "$DIR/env"
}

check_k() {
    [[ "$1" =~ ^[1-9][0-9]*$ ]] && [ "$1" -le "$N" ] || die "node index must be 1..$N, not '$1'"
}

node_var() { # NAME K -> value of CLUSTER_NAME_K
    local v="CLUSTER_$1_$2"
    echo "${!v:-}"
}

# ---------------------------------------------------------------- processes
alive_pid() { # pid -> 0 when it runs (a zombie does not count)
    local st
    [[ "$1" =~ ^[0-9]+$ ]] || return 1
    st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "${st:0:1}" != Z ]
}

vm_pids() { # K -> the pid(s) of node K's beam.smp: the one in its pid file, else any VM whose
            # command line carries node K's HOME (rabbitmq.sh gives each node its own)
    local d pid p
    d=$(node_dir "$1")
    if [ -f "$d/rabbitmq.pid" ]; then
        pid=$(tr -dc '0-9' < "$d/rabbitmq.pid")
        if alive_pid "$pid" && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-home $d/home "; then
            echo "$pid"
            return 0
        fi
    fi
    for p in $(pgrep -x beam.smp || true); do
        tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -qF -- "-home $d/home " && alive_pid "$p" && echo "$p"
    done
    return 0
}

launcher_pid() { # K -> pid of the rabbitmq-server shell that runs node K's VM, when alive
    local d pid
    d=$(node_dir "$1")
    [ -f "$d/launcher.pid" ] || return 0
    pid=$(tr -dc '0-9' < "$d/launcher.pid")
    alive_pid "$pid" && echo "$pid"
    return 0
}

vm_alive() { [ -n "$(vm_pids "$1")" ]; }

# After a SIGKILL the launcher shell exits, and stays a zombie until init reaps it, which
# takes seconds here. rabbitmq.sh checks its pid files with kill -0, which a zombie passes: it
# would refuse to start the node ("alive but does not answer") and take 30 s to stop it.
# So the pid files of processes that do not run any more go, as rabbitmq.sh stop does itself.
forget_dead_pids() { # K
    local d f pid
    d=$(node_dir "$1")
    for f in launcher.pid rabbitmq.pid; do
        [ -f "$d/$f" ] || continue
        pid=$(tr -dc '0-9' < "$d/$f")
        alive_pid "$pid" || rm -f "$d/$f"
    done
}

wait_gone() { # seconds pid... -> 0 once none of them runs
    local deadline=$((SECONDS + $1)) p any; shift
    while :; do
        any=0
        for p; do alive_pid "$p" && any=1; done
        [ $any = 0 ] && return 0
        [ $SECONDS -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

kill_node() { # K: SIGKILL its VM (and the launcher shell), wait until both are gone
    local k=$1 pids lp
    pids=$(vm_pids "$k")
    lp=$(launcher_pid "$k")
    if [ -z "$pids" ] && [ -z "$lp" ]; then
        log "node $k ($(node_var NODE "$k")) is not running"
        return 0
    fi
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
    # the launcher exits by itself once its VM is gone; it must be gone before a restart
    # shellcheck disable=SC2086
    if ! wait_gone 10 $pids $lp; then
        [ -n "$lp" ] && kill -KILL "$lp" 2>/dev/null || true
        # shellcheck disable=SC2086
        wait_gone 5 $pids $lp || die "node $k did not exit after SIGKILL (pids $pids $lp)"
    fi
    forget_dead_pids "$k"
    log "node $k ($(node_var NODE "$k")) killed${pids:+ (beam.smp pid $pids)}"
}

# ---------------------------------------------------------------- cluster state
running_nodes() { # K -> the cluster's running nodes as node K sees them, one a line
    local out
    out=$(ctl "$1" -q cluster_status --formatter json 2>/dev/null) || return 1
    grep -o '"running_nodes":\[[^]]*\]' <<<"$out" | grep -o '"[^"]*@[^"]*"' | tr -d '"'
}

index_of_node() { # node name -> K, or nothing
    local k
    for k in $(seq 1 $N); do
        [ "$(node_var NODE "$k")" = "$1" ] && { echo "$k"; return 0; }
    done
    return 0
}

wait_running() { # K seconds -> waits until node K sees N running nodes
    local k=$1 deadline=$((SECONDS + $2)) n
    while :; do
        n=$(running_nodes "$k" | grep -c . || true)
        [ "$n" = "$N" ] && return 0
        [ $SECONDS -lt $deadline ] || { log "node $k sees $n running nodes, not $N, after $2 s"; return 1; }
        sleep 0.3
    done
}

wait_ports() { # seconds -> waits until the AMQP port of every node accepts connections
    local deadline=$((SECONDS + $1)) k
    for k in $(seq 1 $N); do
        until tcp_accepts "$(node_var PORT "$k")"; do
            [ $SECONDS -lt $deadline ] || { log "AMQP port of node $k does not accept connections"; return 1; }
            sleep 0.2
        done
    done
}

start_nodes() { # K... -> rabbitmq.sh start DIR/nodeK for each, in parallel; 1 if any failed
    local k failed=() pids=()
    for k; do
        forget_dead_pids "$k"
        bash "$RMQ_SH" start "$(node_dir "$k")" >/dev/null 2>"$DIR/node$k.start.log" &
        pids[k]=$!
    done
    for k; do wait "${pids[k]}" || failed+=("$k"); done
    [ ${#failed[@]} = 0 ] && return 0
    for k in "${failed[@]}"; do
        log "node $k did not start; its log:"
        sed 's/^/    /' "$DIR/node$k.start.log" >&2
    done
    return 1
}

# ---------------------------------------------------------------- start
write_cluster_env() {
    local k urls=""
    {
        echo "CLUSTER_SIZE=$N"
        echo "CLUSTER_DIR=$DIR"
        echo "CLUSTER_ENV=$DIR/env"
        for k in $(seq 1 $N); do
            urls="${urls:+$urls,}$(node_var URL "$k")"
            echo "CLUSTER_URL_$k=$(node_var URL "$k")"
            echo "CLUSTER_PORT_$k=$(node_var PORT "$k")"
            echo "CLUSTER_NODE_$k=$(node_var NODE "$k")"
            echo "CLUSTER_DIR_$k=$(node_dir "$k")"
        done
        echo "CLUSTER_URLS=$urls"
    } > "$DIR/env.tmp"
    mv -f "$DIR/env.tmp" "$DIR/env"
}

pick_port() { # lo hi -> a free port in [lo, hi) not in $used (the ports taken so far)
    local p
    while :; do
        p=$(random_port "$1" "$2") || die "found no free port in [$1, $2)"
        case $used in *" $p "*) continue ;; esac
        echo "$p"
        return 0
    done
}

# The ports and names of the N nodes: all different, free now, names not registered in epmd
pick_ports() {
    local k used=" " p name tries=0
    for k in $(seq 1 $N); do
        while :; do
            tries=$((tries + 1)); [ $tries -le 50 ] || die "found no free ports"
            p=$(pick_port 20000 26000)
            name="adtest-$p@localhost"   # the name scheme of rabbitmq.sh
            epmd ${ERL_EPMD_PORT:+-port "$ERL_EPMD_PORT"} -names 2>/dev/null \
                | grep "^name adtest-$p at" >/dev/null || break
        done
        used="$used$p "
        printf -v "CLUSTER_PORT_$k" %s "$p"
        printf -v "CLUSTER_URL_$k" %s "amqp://guest:guest@127.0.0.1:$p"
        printf -v "CLUSTER_NODE_$k" %s "$name"
        p=$(pick_port 20000 26000); used="$used$p "; printf -v "AMQPS_PORT_$k" %s "$p"
        p=$(pick_port 26000 32000); used="$used$p "; printf -v "DIST_PORT_$k" %s "$p"
    done
}

# advanced.config of every node (rabbitmq.sh writes rabbitmq.conf itself and keeps this file)
advanced_config() {
    cat <<'EOF'
%% generated by scripts/cluster.sh
[
 {rabbit, [
   %% pause_minority: a node that loses sight of the majority (a partition, or a VM stalled
   %% past net_ticktime on a busy machine) stops serving until it sees the majority again, then
   %% rejoins by itself. The side that keeps running is the one where quorum queues have their
   %% majority, and the metadata (queues, bindings) never diverges. With `ignore` (the default)
   %% a partition stays until someone restarts nodes; autoheal picks a winner by client count
   %% and restarts the other side, dropping what it accepted meanwhile. Consequence: with 2 of 3
   %% nodes down, the last one pauses as well (its AMQP port closes).
   {cluster_partition_handling, pause_minority},
   %% modest memory: the memory alarm (publishers blocked) at 512 MiB per node, not 40% of RAM
   {vm_memory_high_watermark, {absolute, 536870912}}
 ]},
 %% quorum queues: the Raft write-ahead log is kept in memory up to this size (default 512 MB)
 {ra, [{wal_max_size_bytes, 67108864}]}
].
EOF
}

start_cluster() {
    mkdir -p "$1" || die "cannot create $1"
    DIR=$(cd "$1" && pwd -P)
    local t0=$SECONDS k
    # the nodes run as the user rabbitmq when we are root: it must get through DIR (mktemp -d
    # makes it 0700) to its node dirs, which rabbitmq.sh gives it
    [ "$(id -u)" = 0 ] && chmod go+x "$DIR"

    if [ -f "$DIR/env" ]; then
        # a cluster made here before: start the nodes that do not run, on their ports and data
        load_cluster "$DIR"
        log "starting the nodes of the cluster in $DIR again"
        start_nodes $(seq 1 $N) || { stop_cluster "$DIR" >/dev/null 2>&1 || true; die "the cluster in $DIR did not start"; }
        wait_running 1 "$START_TIMEOUT" && wait_ports "$START_TIMEOUT" \
            || { stop_cluster "$DIR" >/dev/null 2>&1 || true; die "the cluster in $DIR did not come up"; }
        log "cluster of $N nodes up in $DIR after $((SECONDS - t0))s"
        echo "$CLUSTER_URLS"
        return 0
    fi
    for k in $(seq 1 $N); do
        [ -e "$(node_dir "$k")" ] && die "$DIR has node dirs but no env (a failed start?): remove them or choose another DIR"
    done

    pick_ports
    local cookie
    cookie=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F')
    for k in $(seq 1 $N); do
        local d AMQPS_PORT_ DIST_PORT_
        d=$(node_dir "$k")
        mkdir -p "$d/home"
        ( umask 077; printf '%s' "$cookie" > "$d/home/.erlang.cookie" )
        advanced_config > "$d/advanced.config"
        chmod 644 "$d/advanced.config"
        AMQPS_PORT_="AMQPS_PORT_$k" DIST_PORT_="DIST_PORT_$k"
        {
            echo "AMQP_PORT=$(node_var PORT "$k")"
            echo "AMQP_URL=$(node_var URL "$k")"
            echo "AMQPS_PORT=${!AMQPS_PORT_}"
            echo "RABBITMQ_NODENAME=$(node_var NODE "$k")"
            echo "RABBITMQ_DIST_PORT=${!DIST_PORT_}"
        } > "$d/env"
    done

    # on any failure from here on: stop what runs, keep DIR for the logs
    fail() {
        log "$*; stopping the nodes (logs stay in $DIR/node*.start.log, $DIR/node*/log)"
        stop_nodes >/dev/null 2>&1 || true
        die "the cluster did not start in $DIR"
    }
    log "starting $N nodes in $DIR: $(for k in $(seq 1 $N); do printf '%s ' "$(node_var NODE "$k")"; done)"
    rm -f "$DIR/node1.up" "$DIR/node1.failed"
    local pids=() k1
    (
        if bash "$RMQ_SH" start "$(node_dir 1)" >/dev/null; then touch "$DIR/node1.up"; else touch "$DIR/node1.failed"; exit 1; fi
    ) 2>"$DIR/node1.start.log" &
    k1=$!
    # One set of TLS files (CA, server and client certificates) for the whole cluster: a client
    # that trusts the CA reaches every node, and the certificates are made once, not three
    # times in parallel (RSA keys on 2 cores: 2 s). rabbitmq.sh makes them in DIR/tls before it
    # writes DIR/rabbitmq.conf, and makes none where they exist.
    until [ -f "$(node_dir 1)/rabbitmq.conf" ]; do
        kill -0 "$k1" 2>/dev/null || [ -f "$(node_dir 1)/rabbitmq.conf" ] || { wait "$k1" || true; sed 's/^/    /' "$DIR/node1.start.log" >&2; fail "node 1 did not start"; }
        sleep 0.05
    done
    for k in $(seq 2 $N); do cp -a "$(node_dir 1)/tls" "$(node_dir "$k")/tls"; done

    # Nodes 2..N: boot, stop_app, and as soon as node 1 is up, join_cluster and start_app. The
    # nodes boot in parallel; a node that is up before node 1 is stopped meanwhile.
    for k in $(seq 2 $N); do
        (
            set -e
            bash "$RMQ_SH" start "$(node_dir "$k")" >/dev/null
            ctl "$k" -q stop_app
            deadline=$((SECONDS + START_TIMEOUT))
            until [ -f "$DIR/node1.up" ]; do
                [ ! -f "$DIR/node1.failed" ] && [ $SECONDS -lt $deadline ] \
                    || { echo "cluster.sh: node 1 did not start: node $k does not join" >&2; exit 1; }
                sleep 0.1
            done
            # (two nodes join at once; should one of them lose a race in node 1's database,
            # it tries again)
            for try in 1 2 3; do
                ctl "$k" -q join_cluster "$CLUSTER_NODE_1" && break
                [ $try -lt 3 ] || exit 1
                echo "cluster.sh: node $k: join_cluster failed, once more in 1 s" >&2
                sleep 1
            done
            ctl "$k" -q start_app
        ) >/dev/null 2>"$DIR/node$k.start.log" &
        pids[k]=$!
    done
    local join_failed=0
    wait "$k1" || { join_failed=1; log "node 1 did not start:"; sed 's/^/    /' "$DIR/node1.start.log" >&2; }
    for k in $(seq 2 $N); do
        if ! wait "${pids[k]}"; then
            log "node $k did not start or join:"; sed 's/^/    /' "$DIR/node$k.start.log" >&2
            join_failed=1
        fi
    done
    [ $join_failed = 0 ] || fail "the cluster did not form"
    wait_running 1 "$START_TIMEOUT" || fail "the cluster does not show $N running nodes"
    wait_ports "$START_TIMEOUT" || fail "an AMQP port does not accept connections"
    write_cluster_env
    load_cluster "$DIR"
    log "cluster of $N nodes up in $DIR after $((SECONDS - t0))s"
    echo "$CLUSTER_URLS"
}

# ---------------------------------------------------------------- stop
stop_nodes() { # every node of DIR, in parallel; then no VM of DIR may be left
    local k pids=() left
    for k in $(seq 1 $N); do
        [ -f "$(node_dir "$k")/env" ] || continue
        forget_dead_pids "$k"
        timeout --kill-after=5 120 bash "$RMQ_SH" stop "$(node_dir "$k")" 2>"$DIR/node$k.stop.log" &
        pids[k]=$!
    done
    for k in "${!pids[@]}"; do wait "${pids[k]}" || log "rabbitmq.sh stop of node $k failed: $(tail -n 3 "$DIR/node$k.stop.log")"; done
    # whatever survived (no pid file, a stop that failed): SIGKILL, found by its HOME
    for k in $(seq 1 $N); do
        left=$(vm_pids "$k")$(launcher_pid "$k")
        if [ -n "$left" ]; then
            log "node $k still runs after stop; SIGKILL"
            kill_node "$k"
        fi
    done
}

stop_cluster() {
    [ -d "$1" ] || die "no such directory: $1"
    DIR=$(cd "$1" && pwd -P)
    # shellcheck disable=SC1091
    [ -f "$DIR/env" ] && . "$DIR/env"
    stop_nodes
    log "cluster in $DIR stopped"
}

# ---------------------------------------------------------------- queries
status_cluster() {
    local k nodes="" node i
    for k in $(seq 1 $N); do
        vm_alive "$k" || continue
        nodes=$(running_nodes "$k") && [ -n "$nodes" ] && break
    done
    [ -n "$nodes" ] || { echo "no node of the cluster in $DIR answers"; return 1; }
    for node in $nodes; do
        i=$(index_of_node "$node")
        echo "${i:-?} $node $( [ -n "$i" ] && node_var URL "$i")"
    done | sort -n
}

leader_of() { # QUEUE -> K of its leader, when that node's VM runs
    local queue=$1 k out leader="" i
    for k in $(seq 1 $N); do
        vm_alive "$k" || continue
        out=$(ctl "$k" -q list_queues --no-table-headers name type leader 2>/dev/null) || continue
        leader=$(awk -F'\t' -v q="$queue" '$1 == q && $2 == "quorum" { print $3; exit }' <<<"$out")
        break
    done
    [ -n "$leader" ] || return 1
    i=$(index_of_node "$leader")
    [ -n "$i" ] && vm_alive "$i" || return 1
    echo "$i"
}

# ---------------------------------------------------------------- main
[ $# -ge 2 ] || usage
cmd=$1; shift
case $cmd in
start)
    start_cluster "$1" ;;
stop)
    stop_cluster "$1" ;;
kill)
    [ $# -ge 2 ] || usage
    load_cluster "$1"; check_k "$2"
    kill_node "$2" ;;
restart)
    [ $# -ge 2 ] || usage
    load_cluster "$1"; check_k "$2"
    t0=$SECONDS
    start_nodes "$2" || die "node $2 did not start"
    wait_running "$2" "$START_TIMEOUT" || die "node $2 is not back in the cluster"
    log "node $2 ($(node_var NODE "$2")) back in the cluster after $((SECONDS - t0))s"
    node_var URL "$2" ;;
stop-node)
    [ $# -ge 2 ] || usage
    load_cluster "$1"; check_k "$2"
    bash "$RMQ_SH" stop "$(node_dir "$2")" ;;
leader)
    [ $# -ge 2 ] || usage
    load_cluster "$1"
    leader_of "$2" ;;
status)
    load_cluster "$1"
    status_cluster ;;
*)
    usage ;;
esac
