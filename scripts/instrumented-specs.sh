#!/usr/bin/env bash
# Runs the busted specs against instrumented code and fails when any instrumented process
# reported an error, including the processes whose output no spec reads (hosts started by
# specs, lua5.4 processes they start). Called by scripts/test.sh, with the environment it sets
# (AMQP_URL, RABBITMQ_DIR, AMQP_DELEGATE_TMPDIR, AMQP_DELEGATE_PIDS, ...):
#
#   scripts/instrumented-specs.sh asan     BUILD_DIR LOG_DIR [BUSTED ARGS...]
#   scripts/instrumented-specs.sh valgrind BUILD_DIR LOG_DIR [BUSTED ARGS...]
#
# asan      BUILD_DIR is configured with -DAMQP_DELEGATE_SANITIZE=ON (AddressSanitizer, UBSan):
#           hosts are instrumented executables; every lua5.4 (busted itself and those specs
#           start, through a lua5.4 wrapper put first in PATH) runs with gcc's libasan preloaded,
#           which spec/sanitize/preload.c then removes from the environment so that sh, node
#           and rabbitmqctl run without it. Reports: LOG_DIR/asan.PID (ASan, LSan) and
#           LOG_DIR/ubsan.PID (UBSan, through the same preload). Leak suppressions (not our
#           code): spec/sanitize/lsan.supp.
# valgrind  BUILD_DIR is a normal build: every lua5.4 (the wrapper) and every host
#           (AMQP_DELEGATE_WRAPPER, see spec/support.lua) runs under memcheck with
#           --leak-check=full --errors-for-leak-kinds=definite,indirect. Reports:
#           LOG_DIR/valgrind.PID.log; a process with errors there fails the run. Waits in the
#           specs are lengthened by AMQP_DELEGATE_SLOW (default here 8).
#
# Knobs: BUSTED_TIMEOUT (seconds, default 1800); SPECS (spec files or folders, default spec);
# ASAN_EXTRA_OPTIONS (appended to ASAN_OPTIONS, e.g. fast_unwind_on_malloc=0 for full stacks).
# Prints "<mode>: N passed, N failed, N skipped, N reports" last (also in LOG_DIR/summary);
# exits non-zero on a failed spec or any report.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
MODE=${1:?usage: instrumented-specs.sh asan|valgrind BUILD_DIR LOG_DIR [BUSTED ARGS...]}
BUILD_DIR=$(cd "${2:?missing BUILD_DIR}" && pwd -P)
LOG_DIR=${3:?missing LOG_DIR}
shift 3
BUSTED_TIMEOUT=${BUSTED_TIMEOUT:-1800}
LUA=${LUA:-/usr/bin/lua5.4}

die() { echo "instrumented-specs.sh: error: $*" >&2; exit 2; }

[ -x "$BUILD_DIR/amqp-delegate" ] && [ -f "$BUILD_DIR/amqp_delegate.so" ] \
    || die "$BUILD_DIR has no amqp-delegate and amqp_delegate.so: build it first"
rm -rf "$LOG_DIR"
mkdir -p "$LOG_DIR/lua/bin"
LOG_DIR=$(cd "$LOG_DIR" && pwd -P)
# The lua5.4 wrapper goes first in PATH, in a bin/ whose include/ and lib/ siblings are the
# system's: LuaRocks (spec/luarocks_spec.lua) finds Lua's headers from the interpreter's place.
wrapper="$LOG_DIR/lua/bin/lua5.4"
ln -s /usr/include "$LOG_DIR/lua/include"
ln -s /usr/lib "$LOG_DIR/lua/lib"

# spec/sanitize/preload.c, preloaded last into every lua5.4 of the run (and hosts under ASan):
# in the programs AMQP_DELEGATE_PRELOAD_IN names, it removes LD_PRELOAD from the environment
# once the process has started, and sends UBSan's reports to a file. The libraries the module links (rabbitmq-c, OpenSSL, libuv) are preloaded
# into lua5.4 too, so that lua_close's dlclose of the module does not unmap them before the
# leak check at exit: their own once-per-process allocations (rabbitmq-c's OpenSSL BIO method)
# stay reachable from their globals, and stacks through them keep their symbols.
preload="$LOG_DIR/lua/preload.so"
gcc -shared -fPIC -O1 -o "$preload" "$ROOT/spec/sanitize/preload.c" -ldl \
    || die "cannot build spec/sanitize/preload.c"
export AMQP_DELEGATE_PRELOAD_IN="lua5.4 amqp-delegate"
keep=$(ldd "$BUILD_DIR/amqp_delegate.so" | awk '$3 ~ /^\// && $1 ~ /^lib(rabbitmq|ssl|crypto|uv)\./ {print $3}' | paste -sd: -)

case $MODE in
asan)
    grep -q 'AMQP_DELEGATE_SANITIZE:BOOL=ON' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null \
        || die "$BUILD_DIR is not configured with -DAMQP_DELEGATE_SANITIZE=ON"
    libasan=$(gcc -print-file-name=libasan.so)
    libubsan=$(gcc -print-file-name=libubsan.so)
    [ -f "$libasan" ] && [ -f "$libubsan" ] || die "gcc's libasan.so or libubsan.so not found"
    cat > "$wrapper" <<EOF
#!/bin/sh
LD_PRELOAD='$libasan:$libubsan:${keep:+$keep:}$preload' exec '$LUA' "\$@"
EOF
    # hosts are instrumented executables: the preload is only there for UBSan's log file
    export AMQP_DELEGATE_WRAPPER="env LD_PRELOAD=$libasan:$libubsan:$preload"
    export AMQP_DELEGATE_UBSAN_LOG="$LOG_DIR/ubsan"
    export ASAN_OPTIONS="log_path=$LOG_DIR/asan:detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1${ASAN_EXTRA_OPTIONS:+:$ASAN_EXTRA_OPTIONS}"
    export LSAN_OPTIONS="suppressions=$ROOT/spec/sanitize/lsan.supp:print_suppressions=0"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    export AMQP_DELEGATE_SLOW=${AMQP_DELEGATE_SLOW:-2}
    ;;
valgrind)
    command -v valgrind >/dev/null || die "valgrind not found"
    vg="valgrind --tool=memcheck --leak-check=full --errors-for-leak-kinds=definite,indirect"
    vg="$vg --show-leak-kinds=definite,indirect --error-exitcode=99 --num-callers=40"
    vg="$vg --child-silent-after-fork=yes"
    vg="$vg --suppressions=$ROOT/spec/sanitize/valgrind.supp --log-file=$LOG_DIR/valgrind.%p.log"
    vg="$vg --keep-debuginfo=yes"
    cat > "$wrapper" <<EOF
#!/bin/sh
LD_PRELOAD='${keep:+$keep:}$preload' exec $vg '$LUA' "\$@"
EOF
    export AMQP_DELEGATE_WRAPPER="$vg"
    export AMQP_DELEGATE_SLOW=${AMQP_DELEGATE_SLOW:-8}
    ;;
*)
    die "unknown mode '$MODE' (asan or valgrind)" ;;
esac
chmod +x "$wrapper"

export AMQP_DELEGATE_BUILD="$BUILD_DIR"
export LUA_CPATH="$BUILD_DIR/?.so;;"
unset LUA_CPATH_5_4
export PATH="$LOG_DIR/lua/bin:$BUILD_DIR:$PATH"

log="$LOG_DIR/busted.log"
cd "$ROOT"
echo "instrumented-specs.sh: $MODE run of the specs against $BUILD_DIR, reports in $LOG_DIR"
# shellcheck disable=SC2086
timeout --foreground --kill-after=30 "$BUSTED_TIMEOUT" "$wrapper" /usr/bin/busted -o gtest "$@" ${SPECS:-spec} \
    </dev/null 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
[ "$status" = 124 ] && echo "instrumented-specs.sh: busted was stopped after ${BUSTED_TIMEOUT}s" >&2

count() { # regexp -> first number of the first matching line, or 0
    local n
    n=$(grep -E -m1 "$1" "$log" | grep -oE '[0-9]+' | head -n1 || true)
    echo "${n:-0}"
}
passed=$(count '^\[  PASSED  \] [0-9]+ test')
failed=$(( $(count '^\[  FAILED  \] [0-9]+ test') + $(count '^\[  ERROR   \] [0-9]+ error') ))
skipped=$(count '^\[ SKIPPED  \] [0-9]+ test')
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then
    failed=1 # busted failed without counting (crash, timeout, a spec file that does not load)
fi
[ $((passed + failed)) = 0 ] && { echo "instrumented-specs.sh: busted ran no test" >&2; failed=1; }

# ---- every report of every instrumented process, read or not by a spec
reports=0
unchecked=0
checked=0
shopt -s nullglob
case $MODE in
asan)
    for f in "$LOG_DIR"/asan.*; do
        reports=$((reports + 1))
        echo
        echo "==================== $MODE report: $(basename "$f") ===================="
        head -n 120 "$f"
    done
    # UBSan's reports; and the busted output, for a process that could not log to a file
    for f in "$LOG_DIR"/ubsan.*; do
        reports=$((reports + 1))
        echo
        echo "==================== $MODE report: $(basename "$f") ===================="
        head -n 120 "$f"
    done
    if grep -qE 'runtime error:|ERROR: (AddressSanitizer|LeakSanitizer)' "$log"; then
        reports=$((reports + 1))
        echo
        echo "==================== $MODE report in the busted output ===================="
        grep -E -A40 'runtime error:|ERROR: (AddressSanitizer|LeakSanitizer)' "$log" | head -n 120
    fi
    ;;
valgrind)
    for f in "$LOG_DIR"/valgrind.*.log; do
        n=$(grep -oE 'ERROR SUMMARY: [0-9]+ errors' "$f" | grep -oE '[0-9]+' | tail -n1 || true)
        if [ -z "$n" ]; then
            unchecked=$((unchecked + 1)) # killed (SIGKILL) before valgrind could summarize
            continue
        fi
        checked=$((checked + 1))
        if [ "$n" != 0 ]; then
            reports=$((reports + 1))
            echo
            echo "==================== $MODE report: $(basename "$f") ===================="
            sed -n '1,/^==[0-9]*== ERROR SUMMARY/p' "$f" | head -n 200
        fi
    done
    echo "instrumented-specs.sh: $checked valgrind'ed processes checked;" \
        "$unchecked killed before valgrind could check them"
    ;;
esac
echo "$MODE: $passed passed, $failed failed, $skipped skipped, $reports reports" | tee "$LOG_DIR/summary"
[ "$failed" = 0 ] && [ "$reports" = 0 ]
