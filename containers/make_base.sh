#!/usr/bin/env bash
# Make a Debian 12 (bookworm) base image locally, for machines that reach Debian's archive but
# no image registry (the hpclab development and CI machines): debootstrap a minimal root file
# system and import it into podman's (or buildah's) image store.
#
# usage: containers/make_base.sh [TAG]        (default localhost/debian:bookworm; as root)
#
# Then: containers/build.sh --base localhost/debian:bookworm. It takes about a minute and
# 200 MB; an existing TAG is kept (remove it with podman rmi TAG to make it again). The mirror
# is $DEBIAN_MIRROR (default http://deb.debian.org/debian, security updates from
# $DEBIAN_SECURITY_MIRROR); apt in the image uses bookworm,
# bookworm-updates and bookworm-security, as the official debian:bookworm image does.
set -euo pipefail

tag="${1:-localhost/debian:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
die() { echo "error: $*" >&2; exit 1; }

if command -v podman >/dev/null 2>&1; then engine=podman
elif command -v buildah >/dev/null 2>&1; then engine=buildah
else die "neither podman nor buildah found: install one (Debian/Ubuntu: apt-get install podman runc)"; fi
if "$engine" image exists "$tag" 2>/dev/null; then
    echo "base image $tag exists already (podman rmi $tag to make it again)"
    exit 0
fi
[ "$(id -u)" = 0 ] || die "debootstrap needs root: sudo containers/make_base.sh $tag"
command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found: install it (apt-get install debootstrap)"

rootfs="$(mktemp -d "${TMPDIR:-/var/tmp}/hpclab-rootfs.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT
started=$SECONDS
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -n 5 "$rootfs.log" >&2; rm -f "$rootfs.log"; die "debootstrap of bookworm from $mirror failed (last lines above)"; }
rm -f "$rootfs.log"
security="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SOURCES
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
if [ "$engine" = podman ]; then
    tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
else
    container="$(buildah from scratch)"
    tar -C "$rootfs" -c . | tar -C "$(buildah mount "$container")" -x
    buildah umount "$container" >/dev/null
    buildah config --cmd /bin/bash "$container"
    buildah commit -q "$container" "$tag" >/dev/null
    buildah rm "$container" >/dev/null
fi
echo "base image $tag: Debian $(cat "$rootfs/etc/debian_version"), made in $((SECONDS - started)) s"
