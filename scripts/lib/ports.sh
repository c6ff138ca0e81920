# Free TCP ports on 127.0.0.1, for private test brokers. Sourced (not run) by
# scripts/rabbitmq.sh and scripts/cluster.sh; defines functions only.
#
#   port_busy PORT        0 when something listens on PORT (or it is otherwise taken)
#   random_port LO HI     prints a random port in [LO, HI) that is free right now
#   tcp_accepts PORT      0 when a TCP connection to 127.0.0.1:PORT succeeds

port_busy() { # port -> 0 when something listens on it (or it is otherwise taken)
    local p=$1
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Htanl "( sport = :$p )" 2>/dev/null)" ] && return 0
        return 1
    fi
    # no ss: try to connect (a refused connection means nothing listens there)
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then return 0; fi
    return 1
}

random_port() { # lo hi -> a random free port in [lo, hi)
    local lo=$1 hi=$2 p i
    for i in $(seq 1 200); do
        p=$(( lo + (RANDOM * 32768 + RANDOM) % (hi - lo) ))
        if ! port_busy "$p"; then echo "$p"; return 0; fi
    done
    return 1
}

tcp_accepts() { # port -> 0 when a TCP connection to 127.0.0.1:port succeeds
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}
