#!/bin/sh
# Builds and runs the JSON codec tests (spec/c/json_test.c), then runs them
# again under valgrind. Usage: spec/c/build_json_test.sh  (from anywhere)
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
out=${BUILD_DIR:-$root/build/json_test}
mkdir -p "$out"

# shellcheck disable=SC2046
gcc -std=c11 -Wall -Wextra -Werror -O1 -g -I "$root/host/common" -I "$root/host/runtime" \
  "$root/spec/c/json_test.c" "$root/host/runtime/json.c" "$root/host/common/byte_buffer.c" \
  $(pkg-config --cflags --libs lua5.4) -lm -o "$out/json_test"

# A comma-decimal locale exercises the locale independence of number
# formatting and parsing. Debian images rarely ship one, so compile it into
# the build directory when the locale sources are there; the test skips the
# locale cases otherwise.
if [ -z "${LOCPATH:-}" ] && command -v localedef >/dev/null 2>&1; then
  mkdir -p "$out/locale"
  if [ -d "$out/locale/de_DE.UTF-8" ] ||
     localedef -i de_DE -f UTF-8 "$out/locale/de_DE.UTF-8" >/dev/null 2>&1; then
    LOCPATH=$out/locale
    export LOCPATH
  fi
fi

"$out/json_test"

if command -v valgrind >/dev/null 2>&1; then
  valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=all \
    "$out/json_test"
else
  echo "build_json_test.sh: valgrind not found, skipped" >&2
  exit 1
fi
