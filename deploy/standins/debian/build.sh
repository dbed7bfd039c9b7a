#!/usr/bin/env bash
# Stand-in for debian:bookworm-slim, for machines that cannot pull from Docker Hub:
# `debootstrap --variant=minbase bookworm` into a directory, trimmed like the official slim
# image (no apt lists, no caches, no man pages or docs), then `docker import`.
# Usage: deploy/standins/debian/build.sh TAG [LABEL=VALUE]   (root; needs debootstrap and a
# Docker engine; DOCKER names the client)
set -euo pipefail
tag=${1:?usage: build.sh TAG [LABEL=VALUE]}
label=${2:-org.fanout-chat.standin=yes}
docker=${DOCKER:-docker}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

rootfs=$(mktemp -d /var/tmp/chat-standin-debian.XXXXXX)
cleanup() {
    # debootstrap mounts /proc and /sys in the target while it runs; never delete through them.
    umount -l "$rootfs/proc" "$rootfs/sys" 2>/dev/null || true
    rm -rf --one-file-system "$rootfs"
}
trap cleanup EXIT

debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -20 "$rootfs.log" >&2
    rm -f "$rootfs.log"
    exit 1
}
rm -f "$rootfs.log"

# What the official image carries besides the packages: the three suites, services never
# started by package scripts (policy-rc.d), no docs or apt caches.
install -m 0644 "$here/debian.sources" "$rootfs/etc/apt/sources.list.d/debian.sources"
rm -f "$rootfs/etc/apt/sources.list"
install -m 0755 "$here/policy-rc.d" "$rootfs/usr/sbin/policy-rc.d"
install -m 0644 "$here/dpkg-slim.cfg" "$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim"
install -m 0644 "$here/apt-slim.conf" "$rootfs/etc/apt/apt.conf.d/docker-slim"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/var/log/*.log "$rootfs"/tmp/*

tar -C "$rootfs" --numeric-owner --one-file-system --exclude=./proc/* --exclude=./sys/* \
    -c . | "$docker" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --change "LABEL $label" \
    --message "stand-in for debian:bookworm-slim (debootstrap minbase)" \
    - "$tag" >/dev/null
