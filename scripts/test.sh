#!/bin/sh
# Sets everything up and runs the whole test suite:
#   scripts/test.sh              normal build (warnings are errors)
#   scripts/test.sh --sanitize   the same suite under AddressSanitizer + UBSan
# Each test that needs PostgreSQL starts and removes its own cluster.
set -eu
cd "$(dirname "$0")/.."

sanitize=false
[ "${1:-}" = "--sanitize" ] && sanitize=true

scripts/install-deps.sh

if $sanitize; then
	dir=build-asan
	opts="-Dsanitize=true -Dbuildtype=debug"
	export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1"
	export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
else
	dir=build-test
	opts="-Dbuildtype=debugoptimized"
fi

if [ ! -d "$dir" ]; then
	# shellcheck disable=SC2086
	meson setup "$dir" --werror $opts
fi
meson compile -C "$dir"
meson test -C "$dir" --print-errorlogs --num-processes 2 --timeout-multiplier 3
