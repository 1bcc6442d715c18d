#!/usr/bin/env bash
# Fetches Debian 12's current generic 6.1 kernel (linux-image-6.1.0-NN-amd64) and produces
#   DEST/vmlinuz  the bzImage from the package (Linux 64-bit boot protocol)
#   DEST/vmlinux  the ELF kernel decompressed from it (PVH boot: it has the Xen PVH note)
# then prints the two paths, one a line. DEST defaults to .cache/kernel/ in the repository.
#
# Needs apt-get (with package lists), dpkg-deb, readelf and the decompressor the kernel was
# built with (xz or zstd for Debian 6.1; gzip, bzip2, lzma, lz4 and lzop are recognised too).
# Idempotent: when both files exist for the newest package, nothing is downloaded again.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${1:-$root/.cache/kernel}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

die() {
    echo "fetch-debian-kernel: $*" >&2
    exit 1
}

for tool in apt-cache apt-get dpkg-deb readelf od; do
    command -v "$tool" >/dev/null || die "'$tool' is not installed"
done

# The concrete package: what the linux-image-amd64 meta-package depends on, else the newest
# linux-image-6.1.0-NN-amd64 the package lists know.
pkg=$({ apt-cache depends linux-image-amd64 2>/dev/null || true; } |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-6\.1\.0-[0-9]+-amd64$/ { print $2; exit }')
if [ -z "$pkg" ]; then
    pkg=$({ apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null || true; } |
        awk '{ print $1 }' | sort -V | tail -n 1)
fi
[ -n "$pkg" ] || die "no linux-image-6.1.0-*-amd64 package is known (run 'apt-get update' first)"

stamp="$dest/.package"
if [ -s "$dest/vmlinuz" ] && [ -s "$dest/vmlinux" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$pkg" ]; then
    echo "$dest/vmlinuz"
    echo "$dest/vmlinux"
    exit 0
fi

work=$(mktemp -d "$dest/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "fetch-debian-kernel: downloading $pkg" >&2
apt_opts=(-q)
# As root, apt would drop to its '_apt' user, which cannot write into our directory.
[ "$(id -u)" -ne 0 ] || apt_opts+=(-o APT::Sandbox::User=root)
(cd "$work" && apt-get download "${apt_opts[@]}" "$pkg" >&2) || die "apt-get download $pkg failed"
shopt -s nullglob
debs=("$work"/*.deb)
[ "${#debs[@]}" -gt 0 ] || die "apt-get download produced no .deb"
dpkg-deb -x "${debs[0]}" "$work/root" || die "unpacking ${debs[0]##*/} failed"
images=("$work"/root/boot/vmlinuz-*)
[ "${#images[@]}" -gt 0 ] || die "$pkg has no /boot/vmlinuz-*"
image=${images[0]}

# Little-endian unsigned integer of $2 bytes at offset $1 of the image.
le() {
    od -An -t u"$2" -j "$1" -N "$2" "$image" | tr -d ' '
}

# The bzImage setup header says where the compressed kernel is (boot protocol >= 2.08):
# payload_offset (0x248) and payload_length (0x24c), relative to the protected-mode code,
# which starts after the (setup_sects + 1) 512-byte sectors of real-mode setup.
[ "$(od -An -c -j 514 -N 4 "$image" | tr -d ' ')" = "HdrS" ] || die "$image is not a bzImage"
version=$(le 518 2)
[ "$version" -ge 520 ] || die "boot protocol $(printf %#x "$version") has no payload fields"
setup_sects=$(le 497 1)
[ "$setup_sects" -ne 0 ] || setup_sects=4
payload_start=$(( (setup_sects + 1) * 512 + $(le 584 4) ))
payload_length=$(le 588 4)

magic=$(od -An -t x1 -j "$payload_start" -N 6 "$image" | tr -d ' \n')
# All formats but gzip carry a 4-byte uncompressed size after the stream; leave it out.
case "$magic" in
1f8b*) decompress=(gzip -dc); trailer=0 ;;
fd377a585a00) decompress=(xz -dc --single-stream); trailer=4 ;;
28b52ffd*) decompress=(zstd -dcq); trailer=4 ;;
425a68*) decompress=(bzip2 -dc); trailer=4 ;;
5d0000*) decompress=(xz -dc --format=lzma); trailer=4 ;;
02214c18*) decompress=(lz4 -dc); trailer=4 ;;
894c5a4f*) decompress=(lzop -dc); trailer=4 ;;
*) die "unknown compression (payload starts with $magic)" ;;
esac
command -v "${decompress[0]}" >/dev/null || die "'${decompress[0]}' is needed to decompress the kernel"
echo "fetch-debian-kernel: payload at $payload_start ($payload_length bytes), ${decompress[*]}" >&2

# (tail is cut short by head on purpose: its SIGPIPE is not an error.)
want=$((payload_length - trailer))
{ tail -c +"$((payload_start + 1))" "$image" || true; } | head -c "$want" >"$work/payload"
[ "$(stat -c %s "$work/payload")" -eq "$want" ] || die "the payload runs past the end of $image"
"${decompress[@]}" <"$work/payload" >"$work/vmlinux" || die "decompressing the kernel failed"
[ "$(od -An -c -N 4 "$work/vmlinux" | tr -d ' ')" = "177ELF" ] || die "the decompressed kernel is not an ELF"
readelf -h "$work/vmlinux" >/dev/null || die "the decompressed kernel is not a valid ELF"
# The PVH entry point is a Xen note of type 0x12 (XEN_ELFNOTE_PHYS32_ENTRY).
pvh=$(readelf -n "$work/vmlinux" | grep -A1 -E '^\s+Xen\s.*(0x00000012|PHYS32)' | tail -n 1 || true)
if [ -n "$pvh" ]; then
    echo "fetch-debian-kernel: vmlinux has the PVH entry note (${pvh##*: })" >&2
else
    echo "fetch-debian-kernel: warning: vmlinux has no Xen PVH note (XEN_ELFNOTE_PHYS32_ENTRY)" >&2
fi

cp "$image" "$work/vmlinuz"
mv -f "$work/vmlinuz" "$dest/vmlinuz"
mv -f "$work/vmlinux" "$dest/vmlinux"
echo "$pkg" >"$stamp"
echo "$dest/vmlinuz"
echo "$dest/vmlinux"
