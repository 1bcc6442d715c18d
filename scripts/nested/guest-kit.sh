#!/usr/bin/env bash
# Builds the guest kit for the nested tests (issue #9), from Debian's packages only:
#   .cache/nested/kit/vmlinuz, vmlinux   Debian's stock 6.1 kernel (links into .cache/kernel/,
#                                        fetched by scripts/fetch-debian-kernel.sh)
#   .cache/nested/kit/l1.cpio.gz         L1 initramfs: loads kvm_amd, 9p, tun; mounts the host's
#                                        root over virtio-9p, chroots into it, runs the job
#                                        (scripts/nested/l1-init.sh)
#   .cache/nested/kit/l2.cpio.gz         L2 initramfs: markers, NICs, ping, iperf3, poweroff
#                                        (scripts/nested/l2-init.sh); with l2.root=/dev/vda it
#                                        mounts the virtio-blk disk and switch_roots into it
#   .cache/nested/kit/rootfs.ext4        a 64 MiB ext4 root file system made with mke2fs -d from
#                                        busybox (no loop mount): /sbin/init is
#                                        scripts/nested/disk-init.sh
# and prints the kit directory. Idempotent: it rebuilds only when the kernel package or one of
# the scripts changed. Downloads (apt-get download) are cached in .cache/nested/debs/.
#
# Needs apt-get with package lists, dpkg-deb, kmod (depmod, modprobe), gzip,
# qemu-system-x86_64 and iperf3 (the NIC scenarios' L1 side); as root, the missing ones among
# kmod, qemu-system-x86 and iperf3 are installed with apt-get.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$root/scripts/nested"
cache="$root/.cache/nested"
kit="$cache/kit"
debs="$cache/debs"

die() {
    echo "guest-kit: $*" >&2
    exit 1
}
log() {
    echo "guest-kit: $*" >&2
}

# One builder at a time.
mkdir -p "$cache"
exec 8>"$cache/.kit.lock"
flock 8

apt_opts=(-q)
# As root, apt would drop to its '_apt' user, which cannot write into our directory.
[ "$(id -u)" -ne 0 ] || apt_opts+=(-o APT::Sandbox::User=root)

# Host tools: install what is missing when we may (CI runs as root with Debian's registry).
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
{ command -v depmod && command -v modprobe; } >/dev/null || missing+=(kmod)
# L1 runs the host's iperf3 (chrooted into the host's root) against the L2's.
command -v iperf3 >/dev/null || missing+=(iperf3)
# mke2fs -d builds the disk's ext4 image from a directory; e2fsck checks it after a boot.
{ command -v mke2fs && command -v e2fsck; } >/dev/null 2>&1 ||
    [ -x /sbin/mke2fs ] || [ -x /usr/sbin/mke2fs ] || missing+=(e2fsprogs)
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: install them (apt-get install ${missing[*]})"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
        { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; } ||
        die "apt-get install ${missing[*]} failed"
fi
for tool in apt-get dpkg-deb depmod modprobe gzip ldd sha256sum; do
    command -v "$tool" >/dev/null || die "'$tool' is not installed"
done
# depmod and modprobe may live in /sbin, outside a normal user's PATH.
export PATH="$PATH:/usr/sbin:/sbin"

# The kernel: the lead's fetch script (it keeps vmlinuz + vmlinux, not the .deb).
bash "$root/scripts/fetch-debian-kernel.sh" >/dev/null ||
    { [ "$(id -u)" -eq 0 ] && apt-get update -q >&2 && bash "$root/scripts/fetch-debian-kernel.sh" >/dev/null; } ||
    die "scripts/fetch-debian-kernel.sh failed"
kpkg=$(cat "$root/.cache/kernel/.package")

# Everything that decides the kit's contents.
stamp_want=$({
    echo "$kpkg"
    sha256sum "$here/guest-kit.sh" "$here/kit-lib.sh" "$here/l1-init.sh" "$here/l2-init.sh" \
        "$here/disk-init.sh" | awk '{ print $1 }'
} | sha256sum | awk '{ print $1 }')
if [ -s "$kit/l1.cpio.gz" ] && [ -s "$kit/l2.cpio.gz" ] && [ -s "$kit/rootfs.ext4" ] &&
    [ "$(cat "$kit/.stamp" 2>/dev/null)" = "$stamp_want" ]; then
    echo "$kit"
    exit 0
fi

# Packages: the kernel again (for its modules), busybox, iperf3 and its libraries; libc6 and
# libssl3 too, so that the L2 userspace does not depend on what the host has installed.
pkgs=("$kpkg" busybox-static iperf3 libiperf0 libsctp1 libssl3 libc6)
mkdir -p "$debs"
need=()
for p in "${pkgs[@]}"; do
    compgen -G "$debs/${p}_*.deb" >/dev/null || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
    log "downloading ${need[*]}"
    download() {
        (cd "$debs" && apt-get download "${apt_opts[@]}" "${need[@]}" >&2)
    }
    # Stale package lists name versions the registry no longer has: refresh them once (as root).
    download || { [ "$(id -u)" -eq 0 ] && apt-get update -q >&2 && download; } ||
        die "apt-get download ${need[*]} failed"
fi
deb() {
    # The newest cached .deb of package $1.
    local f
    f=$(find "$debs" -maxdepth 1 -name "${1}_*.deb" | sort -V | tail -n 1)
    [ -n "$f" ] || die "no .deb for $1"
    echo "$f"
}

work=$(mktemp -d "$cache/.kit.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Unpack.
dpkg-deb -x "$(deb "$kpkg")" "$work/k"
kver=$(ls "$work/k/lib/modules")
[ -d "$work/k/lib/modules/$kver/kernel" ] || die "$kpkg has no modules"
depmod -b "$work/k" "$kver"
dpkg-deb -x "$(deb busybox-static)" "$work/bb"
busybox="$work/bb/bin/busybox"
[ -x "$busybox" ] || die "busybox-static has no /bin/busybox"
mkdir -p "$work/user"
for p in iperf3 libiperf0 libsctp1 libssl3 libc6; do
    dpkg-deb -x "$(deb "$p")" "$work/user"
done

# shellcheck source=kit-lib.sh
source "$here/kit-lib.sh"
applets=$("$busybox" --list)
skeleton() {
    kit_skeleton "$1" "$2" "$busybox" "$applets"
}
add_modules() {
    local r=$1
    shift
    kit_add_modules "$r" "$work/k" "$kver" "$@"
}
pack() {
    kit_pack "$1" "$2" "$busybox"
}

mkdir -p "$kit"

# L1: KVM (AMD: QEMU's TCG emulates SVM), virtio-pci, 9p over virtio, tun.
l1="$work/l1"
skeleton "$l1" "$here/l1-init.sh"
add_modules "$l1" kvm_amd virtio_pci 9pnet_virtio 9p tun vhost_net
pack "$l1" "$kit/l1.cpio.gz"

# L2: virtio-pci, virtio-net, virtio-rng (loaded when present), pvpanic (the ACPI QEMU0001
# driver: a panic is reported to the VMM), msr and cpuid (for l2.msr= and l2.cpuid=), iperf3 with
# its libraries.
l2="$work/l2"
skeleton "$l2" "$here/l2-init.sh"
add_modules "$l2" virtio_pci virtio_net virtio_rng virtio_blk ext4 pvpanic-mmio msr cpuid
mkdir -p "$l2/usr/bin" "$l2/lib64" "$l2/lib/x86_64-linux-gnu"
cp "$work/user/usr/bin/iperf3" "$l2/usr/bin/iperf3"
# Its libraries as the dynamic linker resolves them, all from the unpacked packages.
libpath="$work/user/usr/lib/x86_64-linux-gnu:$work/user/lib/x86_64-linux-gnu"
LD_LIBRARY_PATH=$libpath ldd "$work/user/usr/bin/iperf3" | awk '$2 == "=>" { print $1, $3 }' |
    while read -r name path; do
        case "$path" in
        "$work"/user/*) cp -L "$path" "$l2/lib/x86_64-linux-gnu/$name" ;;
        *) cp -L "$work/user/lib/x86_64-linux-gnu/$name" "$l2/lib/x86_64-linux-gnu/$name" 2>/dev/null ||
            die "iperf3 needs $name, which no unpacked package has" ;;
        esac
    done
cp -L "$work/user/lib64/ld-linux-x86-64.so.2" "$l2/lib64/ld-linux-x86-64.so.2"
# What iperf3 and busybox expect to find.
echo "root:x:0:0:root:/root:/bin/sh" >"$l2/etc/passwd"
echo "root:x:0:" >"$l2/etc/group"
printf '127.0.0.1 localhost\n' >"$l2/etc/hosts"
pack "$l2" "$kit/l2.cpio.gz"

# The disk: busybox and disk-init.sh as /sbin/init in an ext4 image, no loop mount.
disk="$work/disk"
skeleton "$disk" "$here/disk-init.sh"
mkdir -p "$disk/var"
cp "$disk/init" "$disk/sbin/init"
echo "trapvisor rootfs (mke2fs -d)" >"$disk/etc/tv-rootfs"
echo "root:x:0:0:root:/root:/bin/sh" >"$disk/etc/passwd"
PATH="$PATH:/usr/sbin:/sbin" mke2fs -q -F -t ext4 -L tvroot -d "$disk" "$kit/rootfs.ext4.tmp" 64M >&2 ||
    die "mke2fs -d failed"
mv -f "$kit/rootfs.ext4.tmp" "$kit/rootfs.ext4"

ln -sf ../../kernel/vmlinuz "$kit/vmlinuz"
ln -sf ../../kernel/vmlinux "$kit/vmlinux"
echo "$kver" >"$kit/kver"
echo "$stamp_want" >"$kit/.stamp"
log "built $kit (kernel $kver): l1.cpio.gz $(stat -c %s "$kit/l1.cpio.gz") bytes, l2.cpio.gz $(stat -c %s "$kit/l2.cpio.gz") bytes"
echo "$kit"
