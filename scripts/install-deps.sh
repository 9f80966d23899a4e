#!/bin/sh
# Installs what llmgate needs to build, test and run on Debian 12, as root.
# Each package and why is listed in README.md ("Dependencies").
set -eu

packages="
  build-essential pkg-config meson ninja-build python3
  libevent-dev libcurl4-openssl-dev libjansson-dev libyaml-dev libsodium-dev libpq-dev
  libxml2-dev libpoppler-glib-dev
  libcmocka-dev
  postgresql
  ca-certificates
  dpkg-dev debhelper lintian
  rpm docker-compose mandoc python3-seccomp
"

# The compatibility test drives llmgate with the official openai npm client.
command -v node >/dev/null 2>&1 || packages="$packages nodejs npm"

missing=""
for p in $packages; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
if [ -n "$missing" ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "install-deps: missing packages:$missing (run as root)" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing
fi
# Debian starts a default cluster on port 5432 when it installs PostgreSQL;
# llmgate's scripts and tests run their own clusters and do not need it.
