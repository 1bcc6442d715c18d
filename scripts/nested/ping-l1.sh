#!/bin/bash
# Built-in guest ping in L1 (real KVM): trapvisor default, trapvisor txhold=0 (no transmit
# interrupt held behind the reply's), trapvisor notify=exit, QEMU vhost=off.
tv=$1
set -u
img=/tmp/ping-l1-guest.elf
"$tv" guest-image "$img" || { echo "ping-l1: no guest image"; exit 1; }
ip tuntap add dev tvp0 mode tap
ip addr add 10.0.2.1/24 dev tvp0
ip link set tvp0 up
one() {
    local name=$1 line
    shift
    line=$(timeout 150 "$@" 2>/dev/null </dev/null | tr -d '\r' | grep -a "^net: ping dst" | head -1)
    echo "ping-l1: $name $(grep -o 'received=[0-9]*' <<<"$line") $(grep -o 'median_us=[0-9]*' <<<"$line") $(grep -o 'p99_us=[0-9]*' <<<"$line") $(grep -o 'max_us=[0-9]*' <<<"$line") $(grep -o 'halts=[0-9]*' <<<"$line") $(grep -o 'irqs=[^ ]*' <<<"$line")"
}
cmd="net.ping=10.0.2.1,count=1000,wait=halt"
for r in 1 2 3; do
    one "r$r tv" "$tv" run --kernel "$img" --net tap=tvp0 --cmdline "$cmd"
    one "r$r tvhold0" "$tv" run --kernel "$img" --net tap=tvp0,txhold=0 --cmdline "$cmd"
    one "r$r tvexit" "$tv" run --kernel "$img" --net tap=tvp0,notify=exit --cmdline "$cmd"
    one "r$r qemu" qemu-system-x86_64 -accel kvm -M q35 -cpu host -m 256 -smp 1 -display none \
        -monitor none -serial stdio -nodefaults -no-reboot -kernel "$img" -append "$cmd" \
        -device isa-debug-exit,iobase=0xf4,iosize=4 \
        -netdev tap,id=n0,ifname=tvp0,script=no,downscript=no,vhost=off \
        -device virtio-net-pci,netdev=n0,disable-legacy=on,romfile=
done
echo "ping-l1: done"
