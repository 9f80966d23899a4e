#!/bin/sh
# Sets everything up and runs llmgate on the embedded default: a private
# PostgreSQL cluster started on the spot under .run/ and the mock provider,
# listening on http://127.0.0.1:8080 (LLMGATE_LISTEN changes it), with the
# master key "changeme" (LLMGATE_MASTER_KEY changes it). Ctrl-C stops the
# gateway and the cluster.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)

scripts/install-deps.sh
[ -d build ] || meson setup build -Dbuildtype=debugoptimized
meson compile -C build

run="$top/.run"
pgroot="$run/pg"              # owned by the server's user (postgres as root)
pgdata="$pgroot/data"
pglog="$pgroot/postgres.log"
pgport=${LLMGATE_PG_PORT:-54329}
bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
mkdir -p "$run"

# PostgreSQL refuses to run as root: as root, the cluster belongs to the
# postgres system user.
as_pg() {
	if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ ! -d "$pgdata" ]; then
	password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
	printf '%s\n' "$password" > "$run/pgpass"
	chmod 600 "$run/pgpass"
	mkdir -p "$pgdata"
	[ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$pgroot" "$run/pgpass"
	as_pg "$bindir/initdb" -D "$pgdata" -U postgres --auth=scram-sha-256 \
		--pwfile="$run/pgpass" -E UTF8 >/dev/null
	cat >> "$pgdata/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$pgdata'
CONF
fi
[ "$(id -u)" -eq 0 ] && chmod 755 "$run"
# The port is given at each start, so a cluster made with another
# LLMGATE_PG_PORT follows the one asked for now (a running one is restarted).
as_pg "$bindir/pg_ctl" -D "$pgdata" -w status >/dev/null 2>&1 &&
	as_pg "$bindir/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null
as_pg "$bindir/pg_ctl" -D "$pgdata" -l "$pglog" -o "-p $pgport" -w start >/dev/null
trap 'as_pg "$bindir/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null' EXIT

cat > "$run/config.yml" <<CONF
server:
  listen: ["${LLMGATE_LISTEN:-127.0.0.1:8080}"]
  workers: auto
plugins:
  auth:
    master_key: \${LLMGATE_MASTER_KEY:-changeme}
  usage:
    journal_dir: $run/journal
  rag:
    embeddings_model: mock-embeddings
  mock: {}
dependencies:
  postgres:
    url: postgresql://postgres:\${PGPASSWORD}@127.0.0.1:$pgport/postgres
    pool_size: 5
settings:
  monitoring_postgres_enabled: true
models:
  - name: mock-chat
    type: text-generation
    aliases: [default]
    providers:
      - { type: mock, model_name: mock-chat }
  - name: mock-embeddings
    type: text-embeddings-inference
    providers:
      - { type: mock, model_name: mock-embeddings }
  - name: mock-rerank
    type: text-classification
    providers:
      - { type: mock, model_name: mock-rerank }
CONF

PGPASSWORD=$(cat "$run/pgpass")
export PGPASSWORD
echo "llmgate: PostgreSQL on 127.0.0.1:$pgport (data in $pgdata); config in $run/config.yml"
echo "llmgate: try  curl -H 'Authorization: Bearer ${LLMGATE_MASTER_KEY:-changeme}' http://${LLMGATE_LISTEN:-127.0.0.1:8080}/v1/models"
# Not exec: the EXIT trap stops the cluster once the gateway has exited.
# INT and TERM sent to this script are passed on, so the gateway drains.
build/core/llmgate --config "$run/config.yml" --plugin-dir build/plugins/all "$@" &
gateway=$!
trap 'kill -TERM $gateway 2>/dev/null || true' INT TERM
rc=0
wait $gateway || rc=$?
if kill -0 $gateway 2>/dev/null; then
	rc=0
	wait $gateway || rc=$?
fi
exit $rc
