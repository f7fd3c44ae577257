#!/usr/bin/env bash
# Installs the Debian packages that ringblk's tests and benchmarks compare
# against when they are missing: qemu-utils (qemu-img, qemu-io), fio and
# fio-examples (fio's own job files), nbdkit and libnbd-bin (nbdinfo,
# nbdcopy: the NBD server's client tests), qemu-system-common
# (qemu-storage-daemon: ringblk serve's replies are compared with its).
# Needs root for apt-get; otherwise it names what is missing and fails.
set -euo pipefail

need=()
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v fio >/dev/null 2>&1 || need+=(fio)
[ -d /usr/share/doc/fio/examples ] || need+=(fio-examples)
command -v nbdkit >/dev/null 2>&1 || need+=(nbdkit)
command -v nbdinfo >/dev/null 2>&1 || need+=(libnbd-bin)
command -v qemu-storage-daemon >/dev/null 2>&1 || need+=(qemu-system-common)
command -v ceph-mon >/dev/null 2>&1 || need+=(ceph-mon)
command -v ceph-osd >/dev/null 2>&1 || need+=(ceph-osd)
command -v ceph >/dev/null 2>&1 || need+=(ceph-common)
[ -f /usr/include/rbd/librbd.h ] || need+=(librbd-dev)
[ -f /usr/include/rados/librados.h ] || need+=(librados-dev)
ls /usr/lib/*/qemu/block-rbd.so >/dev/null 2>&1 || need+=(qemu-block-extra)

if [ ${#need[@]} -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "deps: missing ${need[*]}; run 'apt-get install -y ${need[*]}' as root (or run make test as root)" >&2
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "deps: missing ${need[*]} and apt-get is not available; install them with your package manager" >&2
	exit 1
fi
echo "deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
for c in qemu-img fio nbdkit nbdinfo qemu-storage-daemon ceph-mon ceph-osd ceph rbd; do
	command -v "$c" >/dev/null 2>&1 || { echo "deps: $c still missing after apt-get install" >&2; exit 1; }
done
