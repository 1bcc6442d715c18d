# Linux's TCP transmit under L1's real KVM, traced: one L2 (Debian's kernel, virtio_net on
# trapvisor's virtio-net) sends 2 s of iperf3 to L1 with --trace and --trace-kernel (both halves
# of each trap, L2's exit reasons included). Run with:
#   scripts/nested/run.sh --all --scenarios scripts/nested/tcp-trace-scenarios.sh \
#       --out .cache/nested/tcptrace                          # ~30 s
# then, on the host, where each thread's time went while iperf3 ran (the window of the
# 64 KiB "tap writev" spans; read it off the timeline in ui.perfetto.dev):
#   trapvisor trace-summary --totals [--from-ms A --to-ms B] DIR/tcp-tx-trace/trace.json
# DIR/tcp-tx-trace/stderr has the run's exit table and device counters (--stats).
l2_cmdline="console=ttyS0 panic=-1 loglevel=4"
l2=(--initrd "$KIT/l2.cpio.gz" --memory 512M)
mount_tracefs='mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing'
scenario tcp-tx-trace 400 --slow -- "$L1RUN" --tap tv0 --iperf -- sh -c "$mount_tracefs; exec \"\$@\"" \
    sh "$TRAPVISOR" run --trace-kernel --trace "$out/tcp-tx-trace/trace.json" --stats \
    --kernel "$KIT/vmlinuz" "${l2[@]}" --net tap=tv0 \
    --cmdline "$l2_cmdline l2.ip=10.0.2.15/24 l2.iperf=client:10.0.2.1 l2.iperf_dir=tx l2.iperf_time=2"
expect_rc tcp-tx-trace 0
expect tcp-tx-trace iperf-tx '^L2: iperf3 tx mbps=[0-9.]*[1-9]'
expect_not tcp-tx-trace no-loss 'records lost: [1-9]'
