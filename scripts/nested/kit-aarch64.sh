#!/usr/bin/env bash
# Builds the guest kit of the aarch64 nested tests (issue 13), from Debian's arm64 packages only:
#   .cache/nested/kit-arm64/Image        Debian's arm64 cloud kernel (an uncompressed Image), for
#                                        L1 and L2 alike
#   .cache/nested/kit-arm64/l1.cpio.gz   L1 initramfs: busybox, iperf3, the modules L1 needs
#                                        (virtio-pci, virtio-console for the results port, tun),
#                                        /init = scripts/nested/l1-init-aarch64.sh
#   .cache/nested/kit-arm64/l2.cpio.gz   L2 initramfs: busybox, iperf3, virtio-pci, virtio-net,
#                                        virtio-rng, /init = scripts/nested/l2-init.sh
# and prints the kit directory. Idempotent: rebuilt only when the kernel package or one of the
# scripts changes.
#
# The arm64 packages come through a private apt state in .cache/nested/apt-arm64/ (its own
# sources list, package lists and status file: `-o APT::Architecture=arm64 -o Dir::...`), so the
# machine's dpkg is left alone: no `dpkg --add-architecture`. Downloads are cached in
# .cache/nested/debs-arm64/. The host needs apt-get, dpkg-deb, kmod (depmod, modprobe: they read
# arm64 modules fine), readelf (binutils), gzip, and busybox-static's amd64 package for cpio
# (downloaded into .cache/nested/debs/ like the x86 kit's).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here="$root/scripts/nested"
cache="$root/.cache/nested"
kit="$cache/kit-arm64"
debs="$cache/debs-arm64"
hostdebs="$cache/debs"
aptdir="$cache/apt-arm64"
mirror=${TRAPVISOR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${TRAPVISOR_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}

die() {
    echo "kit-aarch64: $*" >&2
    exit 1
}
log() {
    echo "kit-aarch64: $*" >&2
}

mkdir -p "$cache"
exec 8>"$cache/.kit-arm64.lock"
flock 8

export PATH="$PATH:/usr/sbin:/sbin"
for tool in apt-get apt-cache dpkg-deb depmod modprobe gzip readelf sha256sum; do
    command -v "$tool" >/dev/null || die "'$tool' is not installed"
done
asroot=()
[ "$(id -u)" -ne 0 ] || asroot=(-o APT::Sandbox::User=root)

# The private arm64 apt state.
mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial" "$debs" "$hostdebs"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || die "no $keyring (package debian-archive-keyring)"
cat >"$aptdir/sources.list" <<EOF
deb [arch=arm64 signed-by=$keyring] $mirror bookworm main
deb [arch=arm64 signed-by=$keyring] $mirror bookworm-updates main
deb [arch=arm64 signed-by=$keyring] $security bookworm-security main
EOF
touch "$aptdir/status"
apt_arm64=(-q "${asroot[@]}" -o APT::Architecture=arm64 -o APT::Architectures=arm64
    -o "Dir::State::Lists=$aptdir/lists" -o "Dir::Etc::SourceList=$aptdir/sources.list"
    -o Dir::Etc::SourceParts=/nonexistent -o "Dir::State::status=$aptdir/status"
    -o "Dir::Cache=$aptdir/cache")
# Package lists: fetched once, refreshed when a day old (or when a download fails below).
refresh() {
    log "updating the arm64 package lists"
    apt-get "${apt_arm64[@]}" update >&2 || die "apt-get update (arm64 lists) failed"
    touch "$aptdir/.updated"
}
if [ -z "$(find "$aptdir/.updated" -mmin -1440 2>/dev/null)" ]; then
    refresh
fi

# The concrete kernel package behind the cloud meta-package.
kpkg=$(apt-cache "${apt_arm64[@]}" depends linux-image-cloud-arm64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-.*-cloud-arm64$/ { print $2; exit }')
[ -n "$kpkg" ] || die "no linux-image-*-cloud-arm64 behind linux-image-cloud-arm64"

stamp_want=$({
    echo "$kpkg"
    sha256sum "$here/kit-aarch64.sh" "$here/kit-lib.sh" "$here/l1-init-aarch64.sh" "$here/l2-init.sh" |
        awk '{ print $1 }'
} | sha256sum | awk '{ print $1 }')
if [ -s "$kit/l1.cpio.gz" ] && [ -s "$kit/l2.cpio.gz" ] && [ -s "$kit/Image" ] &&
    [ "$(cat "$kit/.stamp" 2>/dev/null)" = "$stamp_want" ]; then
    echo "$kit"
    exit 0
fi

pkgs=("$kpkg" busybox-static iperf3 libiperf0 libsctp1 libssl3 libc6)
need=()
for p in "${pkgs[@]}"; do
    compgen -G "$debs/${p}_*_arm64.deb" >/dev/null || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
    log "downloading arm64 ${need[*]}"
    download() {
        (cd "$debs" && apt-get "${apt_arm64[@]}" download "${need[@]}" >&2)
    }
    download || { refresh && download; } || die "apt-get download (arm64) ${need[*]} failed"
fi
# The host's busybox, for cpio (the x86 kit downloads the same package).
if ! compgen -G "$hostdebs/busybox-static_*_amd64.deb" >/dev/null; then
    log "downloading busybox-static (amd64, for cpio)"
    (cd "$hostdebs" && apt-get download -q "${asroot[@]}" busybox-static >&2) ||
        die "apt-get download busybox-static failed"
fi
deb() {
    local f
    f=$(find "$2" -maxdepth 1 -name "${1}_*.deb" | sort -V | tail -n 1)
    [ -n "$f" ] || die "no .deb for $1 in $2"
    echo "$f"
}

work=$(mktemp -d "$cache/.kit-arm64.XXXXXX")
trap 'rm -rf "$work"' EXIT

dpkg-deb -x "$(deb busybox-static "$hostdebs")" "$work/hostbb"
hostbb="$work/hostbb/bin/busybox"
dpkg-deb -x "$(deb "$kpkg" "$debs")" "$work/k"
kver=$(ls "$work/k/lib/modules")
[ -d "$work/k/lib/modules/$kver/kernel" ] || die "$kpkg has no modules"
image=$(find "$work/k/boot" -name 'vmlinuz-*' | head -n 1)
[ -n "$image" ] || die "$kpkg has no /boot/vmlinuz-*"
[ "$(od -An -c -j 56 -N 4 "$image" | tr -d ' ')" = 'ARMd' ] || die "$image is not an arm64 Image"
depmod -b "$work/k" "$kver"
dpkg-deb -x "$(deb busybox-static "$debs")" "$work/bb"
busybox="$work/bb/bin/busybox"
[ -f "$busybox" ] || die "busybox-static (arm64) has no /bin/busybox"
mkdir -p "$work/user"
for p in iperf3 libiperf0 libsctp1 libssl3 libc6; do
    dpkg-deb -x "$(deb "$p" "$debs")" "$work/user"
done

# The applets of the arm64 busybox: the same package as the host's, so the same list.
applets=$("$hostbb" --list)

# shellcheck source=kit-lib.sh
source "$here/kit-lib.sh"
skeleton() {
    kit_skeleton "$1" "$2" "$busybox" "$applets"
    mkdir -p "$1/usr/bin"
    echo "root:x:0:0:root:/root:/bin/sh" >"$1/etc/passwd"
    echo "root:x:0:" >"$1/etc/group"
    printf '127.0.0.1 localhost\n' >"$1/etc/hosts"
}
add_modules() {
    local r=$1
    shift
    kit_add_modules "$r" "$work/k" "$kver" "$@"
}

# iperf3 and the shared libraries it needs (readelf's NEEDED, followed), from the packages.
add_iperf3() {
    local r=$1 todo lib f found
    mkdir -p "$r/lib/aarch64-linux-gnu" "$r/lib"
    cp "$work/user/usr/bin/iperf3" "$r/usr/bin/iperf3"
    todo="$work/user/usr/bin/iperf3"
    while [ -n "$todo" ]; do
        f=${todo%% *}
        todo=${todo#"$f"}
        todo=${todo# }
        for lib in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
            [ -e "$r/lib/aarch64-linux-gnu/$lib" ] && continue
            found=$(find "$work/user/lib/aarch64-linux-gnu" "$work/user/usr/lib/aarch64-linux-gnu" \
                -name "$lib" 2>/dev/null | head -n 1)
            [ -n "$found" ] || die "iperf3 needs $lib, which no unpacked package has"
            cp -L "$found" "$r/lib/aarch64-linux-gnu/$lib"
            todo="$todo $found"
            todo=${todo# }
        done
    done
    cp -L "$work/user/lib/ld-linux-aarch64.so.1" "$r/lib/ld-linux-aarch64.so.1"
}

pack() {
    kit_pack "$1" "$2" "$hostbb"
}

mkdir -p "$kit"

# L1: KVM is built in; virtio-pci, virtio-console (the results port), tun (the VMM's TAPs),
# vhost_net (for VMMs that use it).
l1="$work/l1"
skeleton "$l1" "$here/l1-init-aarch64.sh"
add_modules "$l1" virtio_pci virtio_console tun vhost_net
add_iperf3 "$l1"
pack "$l1" "$kit/l1.cpio.gz"

# L2: virtio-pci, virtio-net, virtio-rng; iperf3.
l2="$work/l2"
skeleton "$l2" "$here/l2-init.sh"
add_modules "$l2" virtio_pci virtio_net virtio_rng
add_iperf3 "$l2"
pack "$l2" "$kit/l2.cpio.gz"

cp "$image" "$kit/Image.tmp"
mv -f "$kit/Image.tmp" "$kit/Image"
echo "$kver" >"$kit/kver"
echo "$stamp_want" >"$kit/.stamp"
log "built $kit (kernel $kver): Image $(stat -c %s "$kit/Image") bytes, l1.cpio.gz $(stat -c %s "$kit/l1.cpio.gz"), l2.cpio.gz $(stat -c %s "$kit/l2.cpio.gz")"
echo "$kit"
