#!/usr/bin/env bash
# Builds the `switchyard` container image from this checkout's binaries, FROM scratch: nothing is
# pulled from any registry. The binaries and the shared libraries they load (found with ldd) are
# staged into a root file system and copied into an empty image.
#
#   deploy/build-image.sh                 # cargo build --release, image switchyard:latest
#   PROFILE=debug TAG=dev deploy/build-image.sh
#   COORDINATOR_BIN=... AGENT_BIN=... CLI_BIN=... deploy/build-image.sh   # given binaries, no build
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
TAG=${TAG:-latest}
TARGET=${CARGO_TARGET_DIR:-target}
if [ -z "${COORDINATOR_BIN:-}" ]; then
  if [ "$PROFILE" = release ]; then cargo build --workspace --bins --release; else cargo build --workspace --bins; fi
  COORDINATOR_BIN=$TARGET/$PROFILE/switchyard-coordinator
  AGENT_BIN=$TARGET/$PROFILE/switchyard-agent
  CLI_BIN=$TARGET/$PROFILE/switchyard
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/rootfs
mkdir -p "$root/usr/local/bin" "$root/var/lib/switchyard" "$root/etc/switchyard" "$root/tmp"
chmod 1777 "$root/tmp"
# The processes run as uid/gid 10001 (no name: the image has no /etc/passwd); their data folder
# belongs to them.
chown 10001:10001 "$root/var/lib/switchyard" 2>/dev/null || true
strip -o "$root/usr/local/bin/switchyard-coordinator" "$COORDINATOR_BIN"
strip -o "$root/usr/local/bin/switchyard-agent" "$AGENT_BIN"
strip -o "$root/usr/local/bin/switchyard" "$CLI_BIN"
# The shared libraries, at the paths the dynamic loader looks for them.
for lib in $(ldd "$root"/usr/local/bin/* | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp deploy/Dockerfile "$stage/"
docker build -q -t "switchyard:$TAG" "$stage" >/dev/null
echo "built image switchyard:$TAG"
