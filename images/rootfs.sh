#!/usr/bin/env bash
# The image's root filesystem without a registry: Debian bookworm from Debian's mirror
# (mmdebstrap), the packages the Containerfile installs, and the binary. For machines that
# reach no image registry (CI here); import it where one is wanted:
#   images/rootfs.sh agent target/release /tmp/agent-root
#   tar -C /tmp/agent-root -c . | podman import --change 'ENTRYPOINT ["manta"]' - manta:dev
set -euo pipefail
kind=${1:?agent|operator}
bins=${2:?the directory holding the built binaries}
out=${3:?where to write the root}
mirror=${MANTA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "$0")" && pwd)
case "$kind" in
  agent) bin=manta ;;
  operator) bin=manta-operator ;;
  *) echo "rootfs.sh: agent or operator, not $kind" >&2; exit 2 ;;
esac
packages=$(grep -v '^#' "$here/$kind.packages" | paste -sd, -)
rm -rf "$out"
mmdebstrap --quiet --variant=essential --mode=root --include="$packages" bookworm "$out" "$mirror"
install -m 0755 "$bins/$bin" "$out/usr/local/bin/$bin"
