#!/usr/bin/env bash
# Private RabbitMQ nodes for tests: each one keeps its whole state under its own DIR.
#
#   scripts/rabbitmq.sh start DIR         start a node (free ports, unique name); prints AMQP_URL last
#   scripts/rabbitmq.sh stop DIR          stop that node (and only that node), wait for it to exit
#   scripts/rabbitmq.sh restart DIR       full stop + start on the same ports and data dir
#   scripts/rabbitmq.sh restart-app DIR   stop_app + start_app (VM stays up, connections are closed)
#   scripts/rabbitmq.sh ctl DIR ARGS...   rabbitmqctl -n NODE ARGS... against that node
#   scripts/rabbitmq.sh diag DIR ARGS...  rabbitmq-diagnostics -n NODE ARGS... against that node
#   scripts/rabbitmq.sh status DIR        exit 0 when the node runs and answers, 1 otherwise
#
# After start, DIR/env holds shell-sourceable lines:
#   AMQP_PORT, AMQP_URL, RABBITMQ_NODENAME, RABBITMQ_DIST_PORT, RABBITMQ_DIR, RABBITMQ_PID_FILE, ...
# `start` on a DIR whose env exists but whose node is not running starts the node again on the
# env's AMQP_PORT, AMQP_URL, AMQPS_PORT, RABBITMQ_DIST_PORT, RABBITMQ_NODENAME, with its data
# and cookie (DIR/home/.erlang.cookie, made only when missing). scripts/cluster.sh relies on
# this: it writes those lines, a shared cookie and DIR/advanced.config before the first start.
#
# Layout of DIR: home/ (HOME with this node's own .erlang.cookie), mnesia/, log/, rabbitmq.conf,
# enabled_plugins, rabbitmq-env.conf (empty: keeps /etc/rabbitmq/rabbitmq-env.conf out),
# rabbitmq.pid, log/server.out (stdout/stderr of the server), env.
#
# The node runs as the user `rabbitmq` when started as root (as the packaged scripts do); the
# CLI runs as the caller with HOME=DIR/home, so both sides read the same per-node cookie and
# nothing in /root or /var/lib/rabbitmq is used or changed. The Erlang port mapper (epmd) is the
# shared one on its usual port (or $ERL_EPMD_PORT): names are unique, so nodes do not clash.
# Everything listens on 127.0.0.1 only.
set -euo pipefail

RMQ_BIN=${RMQ_BIN:-/usr/lib/rabbitmq/bin}
START_TIMEOUT=${RABBITMQ_START_TIMEOUT:-90}
STOP_TIMEOUT=${RABBITMQ_STOP_TIMEOUT:-60}

die() { echo "rabbitmq.sh: error: $*" >&2; exit 1; }
log() { echo "rabbitmq.sh: $*" >&2; }

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 64
}

abs_dir() { (cd "$1" && pwd -P); }

# ---------------------------------------------------------------- ports
# port_busy, random_port, tcp_accepts (shared with scripts/cluster.sh)
# shellcheck source=lib/ports.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/ports.sh"

# ---------------------------------------------------------------- node env
load_env() { # DIR -> sets globals from DIR/env
    DIR=$(abs_dir "$1") || die "no such directory: $1"
    [ -f "$DIR/env" ] || die "$DIR/env not found: no node was started in $DIR"
    # shellcheck disable=SC1091
    . "$DIR/env"
    [ -n "${RABBITMQ_NODENAME:-}" ] || die "$DIR/env has no RABBITMQ_NODENAME"
    NODE=$RABBITMQ_NODENAME
}

# CLI tools for this node: run as the caller, with this node's cookie.
cli() { # tool args...   (CLI_TIMEOUT=N bounds the call)
    local tool=$1; shift
    local pre=()
    [ -n "${CLI_TIMEOUT:-}" ] && pre=(timeout "$CLI_TIMEOUT")
    "${pre[@]}" env HOME="$DIR/home" \
        RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins" \
        ERL_EPMD_ADDRESS=127.0.0.1 \
        ${ERL_EPMD_PORT:+ERL_EPMD_PORT="$ERL_EPMD_PORT"} \
        "$RMQ_BIN/$tool" -n "$NODE" "$@"
}

server_pid() { # prints the pid of the Erlang VM when it is alive
    local pid=""
    [ -f "$DIR/rabbitmq.pid" ] && pid=$(tr -dc '0-9' < "$DIR/rabbitmq.pid")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; return 0; fi
    return 1
}

launcher_pid() {
    local pid=""
    [ -f "$DIR/launcher.pid" ] && pid=$(tr -dc '0-9' < "$DIR/launcher.pid")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; return 0; fi
    return 1
}

node_alive() { server_pid >/dev/null || launcher_pid >/dev/null; }

log_tail() {
    local f
    for f in "$DIR/log/server.out" "$DIR"/log/*.log; do
        [ -s "$f" ] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 40 "$f" >&2
    done
}

# ---------------------------------------------------------------- start
# A CA, a server certificate for localhost and 127.0.0.1, a client certificate, and a
# second CA that signed none of them (for the specs' wrong-CA case). Made once per DIR.
make_tls() {
    local tls=$1
    [ -s "$tls/client.pem" ] && return 0
    command -v openssl >/dev/null || die "openssl not found (scripts/install-deps.sh installs it)"
    mkdir -p "$tls"
    (
        cd "$tls"
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=amqp-delegate test CA" \
            -keyout ca.key -out ca.pem
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=some other CA" \
            -keyout other-ca.key -out other-ca.pem
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > server.ext
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
            -extfile server.ext -out server.pem
        openssl req -newkey rsa:2048 -nodes -subj "/CN=guest" -keyout client.key -out client.csr
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
            -out client.pem
    ) >"$tls/openssl.log" 2>&1 || { cat "$tls/openssl.log" >&2; die "could not make the test certificates"; }
    chmod 644 "$tls"/*.pem "$tls"/*.key
}

write_files() {
    mkdir -p "$DIR/home" "$DIR/mnesia" "$DIR/log"
    if [ ! -s "$DIR/home/.erlang.cookie" ]; then
        # 32 random characters from the kernel (no pipe that could die of SIGPIPE)
        local cookie
        cookie=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F')
        ( umask 077; printf '%s' "$cookie" > "$DIR/home/.erlang.cookie" )
    fi
    chmod 400 "$DIR/home/.erlang.cookie"
    make_tls "$DIR/tls"
    cat > "$DIR/rabbitmq.conf" <<EOF
# private test node; generated by scripts/rabbitmq.sh
listeners.tcp.1 = 127.0.0.1:$AMQP_PORT
listeners.ssl.1 = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $DIR/tls/ca.pem
ssl_options.certfile = $DIR/tls/server.pem
ssl_options.keyfile = $DIR/tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
loopback_users.guest = true
log.file.level = info
log.console = false
EOF
    echo '[].' > "$DIR/enabled_plugins"
    : > "$DIR/rabbitmq-env.conf"
}

start_node() {
    local dir_arg=$1 reuse=0
    mkdir -p "$dir_arg" || die "cannot create $dir_arg"
    DIR=$(abs_dir "$dir_arg")

    if [ -f "$DIR/env" ]; then
        load_env "$DIR"
        if node_alive; then
            if cli rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
                log "node $NODE already runs in $DIR"
                echo "$AMQP_URL"
                return 0
            fi
            die "a node process for $DIR is alive but does not answer; run: $0 stop $DIR"
        fi
        reuse=1
        port_busy "$AMQP_PORT" && die "AMQP port $AMQP_PORT of $DIR is taken by another process"
        port_busy "$AMQPS_PORT" && die "AMQPS port $AMQPS_PORT of $DIR is taken by another process"
        port_busy "$RABBITMQ_DIST_PORT" && die "distribution port $RABBITMQ_DIST_PORT of $DIR is taken"
    fi

    command -v "$RMQ_BIN/rabbitmq-server" >/dev/null 2>&1 || [ -x "$RMQ_BIN/rabbitmq-server" ] \
        || die "$RMQ_BIN/rabbitmq-server not found (install rabbitmq-server: scripts/install-deps.sh)"

    if [ "$reuse" = 0 ]; then
        # AMQP and distribution ports below the ephemeral range, free right now; the node name
        # carries the AMQP port, so two live nodes never share a name.
        local tries=0
        while :; do
            tries=$((tries + 1)); [ $tries -le 50 ] || die "found no free pair of ports"
            AMQP_PORT=$(random_port 20000 26000) || die "found no free AMQP port"
            AMQPS_PORT=$(random_port 20000 26000) || die "found no free AMQPS port"
            [ "$AMQPS_PORT" != "$AMQP_PORT" ] || continue
            RABBITMQ_DIST_PORT=$(random_port 26000 32000) || die "found no free distribution port"
            NODE="adtest-$AMQP_PORT@localhost"
            # the name must not be registered already (shared epmd)
            if epmd ${ERL_EPMD_PORT:+-port "$ERL_EPMD_PORT"} -names 2>/dev/null \
                | grep -q "^name adtest-$AMQP_PORT at"; then
                continue
            fi
            break
        done
        RABBITMQ_NODENAME=$NODE
        AMQP_URL="amqp://guest:guest@127.0.0.1:$AMQP_PORT"
    fi

    write_files
    rm -f "$DIR/rabbitmq.pid" "$DIR/launcher.pid"

    # The node runs as `rabbitmq` when we are root: it must own its folders and reach DIR.
    local run_as=()
    if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
        chown -R rabbitmq: "$DIR/home" "$DIR/mnesia" "$DIR/log"
        chown rabbitmq: "$DIR"
        if ! setpriv --reuid rabbitmq --regid rabbitmq --init-groups test -w "$DIR/mnesia" -a -r "$DIR/rabbitmq.conf" 2>/dev/null; then
            die "user rabbitmq cannot reach $DIR (a parent folder is not searchable by others?); choose a DIR under /tmp"
        fi
        run_as=(setpriv --reuid rabbitmq --regid rabbitmq --init-groups)
    fi

    {
        echo "AMQP_PORT=$AMQP_PORT"
        echo "AMQP_URL=$AMQP_URL"
        echo "AMQPS_PORT=$AMQPS_PORT"
        echo "AMQPS_URL=amqps://guest:guest@localhost:$AMQPS_PORT"
        echo "TLS_DIR=$DIR/tls"
        echo "RABBITMQ_NODENAME=$RABBITMQ_NODENAME"
        echo "RABBITMQ_DIST_PORT=$RABBITMQ_DIST_PORT"
        echo "RABBITMQ_DIR=$DIR"
        echo "RABBITMQ_PID_FILE=$DIR/rabbitmq.pid"
        [ -n "${ERL_EPMD_PORT:-}" ] && echo "ERL_EPMD_PORT=$ERL_EPMD_PORT"
    } > "$DIR/env.tmp"
    # env is written only once the node answers; until then keep it aside
    local t0=$SECONDS
    log "starting $NODE (AMQP 127.0.0.1:$AMQP_PORT, dist $RABBITMQ_DIST_PORT) in $DIR"

    # setsid: own session, so a ^C in the caller's terminal reaches our trap, not the node;
    # all output to a file and no stdin, so nothing holds the caller's pipes open.
    setsid "${run_as[@]}" env \
        HOME="$DIR/home" \
        RABBITMQ_NODENAME="$NODE" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$AMQP_PORT" \
        RABBITMQ_DIST_PORT="$RABBITMQ_DIST_PORT" \
        RABBITMQ_CONFIG_FILE="$DIR/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/advanced.config" \
        RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins" \
        RABBITMQ_MNESIA_BASE="$DIR/mnesia" \
        RABBITMQ_LOG_BASE="$DIR/log" \
        RABBITMQ_PID_FILE="$DIR/rabbitmq.pid" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        ERL_EPMD_ADDRESS=127.0.0.1 \
        ${ERL_EPMD_PORT:+ERL_EPMD_PORT="$ERL_EPMD_PORT"} \
        "$RMQ_BIN/rabbitmq-server" > "$DIR/log/server.out" 2>&1 < /dev/null &
    echo $! > "$DIR/launcher.pid"

    # wait: node registered in epmd, answers ping, the app is booted, the AMQP port accepts
    # connections. (epmd first: asking it is cheap, while each ping starts an Erlang VM for the
    # CLI, which slows down the nodes starting at the same time on few cores.)
    local deadline=$((SECONDS + START_TIMEOUT)) reason="the node did not answer ping"
    local stage=epmd
    command -v epmd >/dev/null 2>&1 || stage=ping
    while :; do
        if ! node_alive; then
            mv -f "$DIR/env.tmp" "$DIR/env.failed" 2>/dev/null || true
            log "node $NODE exited during start-up"
            log_tail
            die "RabbitMQ failed to start in $DIR"
        fi
        case $stage in
        epmd)
            if epmd ${ERL_EPMD_PORT:+-port "$ERL_EPMD_PORT"} -names 2>/dev/null \
                | grep "^name ${NODE%@*} at" >/dev/null; then stage=ping; continue; fi ;;
        ping)
            if CLI_TIMEOUT=20 cli rabbitmq-diagnostics -q ping >/dev/null 2>&1; then stage=boot; continue; fi ;;
        boot)
            reason="the rabbit application did not finish booting"
            if CLI_TIMEOUT=30 cli rabbitmqctl -q await_startup --timeout 20 >/dev/null 2>&1; then stage=port; continue; fi ;;
        port)
            reason="the AMQP port $AMQP_PORT does not accept connections"
            if tcp_accepts "$AMQP_PORT" && tcp_accepts "$AMQPS_PORT"; then break; fi ;;
        esac
        if [ $SECONDS -ge $deadline ]; then
            log "gave up after ${START_TIMEOUT}s: $reason"
            log_tail
            mv -f "$DIR/env.tmp" "$DIR/env" 2>/dev/null || true   # so stop can find the node
            "$0" stop "$DIR" >/dev/null 2>&1 || true
            die "RabbitMQ did not start in $DIR"
        fi
        sleep 0.5
    done
    mv -f "$DIR/env.tmp" "$DIR/env"
    log "node $NODE is up after $((SECONDS - t0))s"
    echo "$AMQP_URL"
}

# ---------------------------------------------------------------- stop
stop_node() {
    load_env "$1"
    if ! node_alive; then
        log "node $NODE in $DIR is not running"
        rm -f "$DIR/launcher.pid"
        return 0
    fi
    local pid lpid
    pid=$(server_pid || true)
    lpid=$(launcher_pid || true)
    # the clean way: rabbitmqctl stop (with the pid file it waits for the VM to exit)
    if [ -n "$pid" ]; then
        if ! CLI_TIMEOUT=$STOP_TIMEOUT cli rabbitmqctl -q stop "$DIR/rabbitmq.pid" >/dev/null 2>&1; then
            log "rabbitmqctl stop failed; sending SIGTERM to pid $pid"
        fi
    fi
    # then make sure: TERM, wait, KILL -- only the pids recorded in DIR
    local deadline=$((SECONDS + 30)) sent_term=0
    while node_alive; do
        if [ $sent_term = 0 ] && [ $SECONDS -ge $((deadline - 25)) ]; then
            [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
            [ -n "$lpid" ] && kill -TERM "$lpid" 2>/dev/null || true
            sent_term=1
        fi
        if [ $SECONDS -ge $deadline ]; then
            log "node did not exit; SIGKILL"
            [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
            [ -n "$lpid" ] && kill -KILL "$lpid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f "$DIR/launcher.pid"
    log "node $NODE stopped"
}

# ---------------------------------------------------------------- main
[ $# -ge 2 ] || usage
cmd=$1; shift
case $cmd in
start)
    start_node "$1" ;;
stop)
    stop_node "$1" ;;
restart)
    stop_node "$1"
    start_node "$1" ;;
restart-app)
    load_env "$1"
    cli rabbitmqctl -q stop_app
    cli rabbitmqctl -q start_app
    deadline=$((SECONDS + START_TIMEOUT))
    until tcp_accepts "$AMQP_PORT"; do
        [ $SECONDS -lt $deadline ] || die "AMQP port $AMQP_PORT did not reopen"
        sleep 0.2
    done
    echo "$AMQP_URL" ;;
ctl)
    load_env "$1"; shift
    cli rabbitmqctl "$@" ;;
diag)
    load_env "$1"; shift
    cli rabbitmq-diagnostics "$@" ;;
status)
    load_env "$1"
    if node_alive && CLI_TIMEOUT=20 cli rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
        echo "running: $NODE $AMQP_URL"
    else
        echo "not running: $NODE"
        exit 1
    fi ;;
*)
    usage ;;
esac
