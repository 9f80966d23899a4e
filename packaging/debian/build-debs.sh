#!/bin/sh
# Builds the llmgate .debs from a clean copy of the source tree:
#
#   packaging/debian/build-debs.sh [OUTDIR]
#
# dpkg-buildpackage wants debian/ at the root of the source, so this copies
# the tree (the files git knows of, tracked or new and not ignored; without
# git, everything but build directories) into a temporary directory, puts
# packaging/debian there as ./debian and runs `dpkg-buildpackage -us -uc -b`.
# The .deb, .changes and .buildinfo files land in OUTDIR (default:
# build-deb/ in the tree). DEB_BUILD_OPTIONS is passed on (e.g. nocheck).
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/build-deb}
mkdir -p "$out"
out=$(cd "$out" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/llmgate-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
src=$work/llmgate-0.1.0
mkdir "$src"

if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	git -C "$root" ls-files -z --cached --others --exclude-standard |
		tar -C "$root" --null -T - --ignore-failed-read -cf - | tar -C "$src" -xf -
else
	tar -C "$root" --exclude='./build*' --exclude=./.git --exclude=./.run \
		--exclude=__pycache__ -cf - . | tar -C "$src" -xf -
fi
rm -rf "$src/debian"
cp -a "$src/packaging/debian" "$src/debian"

(cd "$src" && dpkg-buildpackage -us -uc -b -Jauto)

for f in "$work"/*.deb "$work"/*.changes "$work"/*.buildinfo; do
	[ -e "$f" ] && mv "$f" "$out/"
done
ls -1 "$out"
