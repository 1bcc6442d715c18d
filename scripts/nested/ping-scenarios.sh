# The built-in guest's ping under L1's real KVM (scripts/nested/ping-l1.sh, run inside L1):
# trapvisor with notify=ioeventfd (the default, and with txhold=0) and notify=exit, and QEMU
# vhost=off, 3 rounds of 1000 pings each, wait=halt. Run with:
#   scripts/nested/run.sh --all --scenarios scripts/nested/ping-scenarios.sh \
#       --add scripts/nested/ping-l1.sh --out .cache/nested/ping
# and read the "ping-l1:" lines of DIR/ping/console.
scenario ping 900 --slow -- bash "$KIT/ping-l1.sh" "$TRAPVISOR"
expect ping done '^ping-l1: done'
