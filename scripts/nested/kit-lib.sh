# Helpers shared by the kit builders (guest-kit.sh for x86_64, kit-aarch64.sh); sourced, with
# `die` defined by the caller.

# kit_skeleton ROOT INIT BUSYBOX APPLETS: an initramfs root with busybox (BUSYBOX: the binary for
# the guest's architecture) and a link for each of APPLETS (a list), /init from INIT.
kit_skeleton() {
    local r=$1 init=$2 busybox=$3 applets=$4 a
    mkdir -p "$r"/{bin,sbin,dev,proc,sys,tmp,run,etc,root,mnt}
    cp "$busybox" "$r/bin/busybox"
    for a in $applets; do
        [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"
    done
    install -m 0755 "$init" "$r/init"
}

# kit_add_modules ROOT KROOT KVER MODULE...: the modules with their dependencies (modprobe
# --show-depends in the unpacked kernel package KROOT) into ROOT, /etc/modules.load in insmod
# order, and a modules.dep made by depmod.
kit_add_modules() {
    local r=$1 kroot=$2 kver=$3 m line ko rel
    shift 3
    : >"$r/etc/modules.load"
    for m in "$@"; do
        modprobe -d "$kroot" -S "$kver" --show-depends "$m" 2>/dev/null | while read -r line; do
            case "$line" in
            insmod\ *)
                ko=${line#insmod }
                ko=${ko%% *}
                rel=${ko#"$kroot"}
                mkdir -p "$r$(dirname "$rel")"
                cp "$ko" "$r$rel"
                grep -qxF "$rel" "$r/etc/modules.load" || echo "$rel" >>"$r/etc/modules.load"
                ;;
            builtin\ *) ;;
            esac
        done
    done
    [ -s "$r/etc/modules.load" ] || die "none of $* found in the kernel package"
    cp "$kroot/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$r/lib/modules/$kver/"
    depmod -b "$r" "$kver"
}

# kit_pack ROOT OUT BUSYBOX: ROOT packed into OUT (newc cpio by BUSYBOX, a binary that runs
# here; gzip), owned by root.
kit_pack() {
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | "$3" cpio -o -H newc -R 0:0 2>/dev/null) |
        gzip -6 >"$2.tmp"
    mv -f "$2.tmp" "$2"
}
