#!/bin/sh
# llmgate's benchmark: one command, one run, figures against nginx.
#
#   bench/run.sh [--without PLUGIN]... [--with PLUGIN]... [--duration 10]
#                [--warmup 2] [--connections 50] [--threads 2]
#                [--workloads chat,stream,embeddings] [--json FILE]
#                [--repeat 1] [--perf WORKLOAD] [--instructions] [--no-access-log]
#
# Builds llmgate with -Dbuildtype=release in its own build directory
# (build-bench-release, or $LLMGATE_BENCH_BUILD), starts a private PostgreSQL
# cluster, the C mock upstream, nginx as a bare reverse proxy and llmgate,
# then measures each with wrk. Everything it starts is stopped at the end.
# bench/README.md explains the figures and records the last results.
#
# Needs: wrk, nginx (nginx-light), python3, a C compiler, PostgreSQL's server
# binaries; for --perf: perf (linux-perf); for --instructions: valgrind.
set -eu
cd "$(dirname "$0")/.."

build=${LLMGATE_BENCH_BUILD:-build-bench-release}

for tool in wrk nginx python3 cc meson ninja pkg-config; do
	if ! command -v "$tool" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$tool" ]; then
		echo "bench: $tool not found (Debian: wrk nginx-light python3 build-essential" \
		     "meson ninja-build pkg-config)" >&2
		exit 1
	fi
done

# Quiet unless something fails.
quietly() {
	if ! out=$("$@" 2>&1); then
		printf '%s\n' "$out" >&2
		echo "bench: failed: $*" >&2
		exit 1
	fi
}
if [ ! -d "$build" ]; then
	quietly meson setup "$build" -Dbuildtype=release
fi
quietly meson compile -C "$build"

# The benchmark-only AUTH stub used by --without auth, built against the SDK
# headers as an out-of-tree plugin would be.
stubdir="$build/bench-plugins"
mkdir -p "$stubdir"
# shellcheck disable=SC2046
cc -std=gnu11 -O2 -fPIC -shared -fvisibility=hidden -Wall -Wextra -Werror \
	-Wl,--no-undefined -Icore/include $(pkg-config --cflags libevent_core libpq) \
	bench/plugins/bench_anyone.c -o "$stubdir/bench_anyone.so"

exec python3 bench/bench.py --build "$build" --stub-dir "$stubdir" "$@"
