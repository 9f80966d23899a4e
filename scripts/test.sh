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
rc=0
meson test -C "$dir" --print-errorlogs --num-processes 2 --timeout-multiplier 3 || rc=$?
# One closing line for the whole suite, counted from meson's own log.
python3 - "$dir/meson-logs/testlog.json" <<'PY'
import json, sys
passed = failed = skipped = 0
with open(sys.argv[1]) as f:
    for line in f:
        result = json.loads(line).get("result")
        if result in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif result == "SKIP":
            skipped += 1
        else:
            failed += 1
print("%d passed, %d failed%s" % (passed, failed, ", %d skipped" % skipped if skipped else ""))
PY
exit $rc
