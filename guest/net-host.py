#!/usr/bin/env python3
"""Host side of the built-in guest's UDP commands (run it inside the test namespace).

  net-host.py send DST PORT [--count N] [--pps N] [--size B] [--seconds S] [--flows F]
      sends test datagrams (the format of net.udp-tx / net.udp-rx, below) to DST:PORT, datagram
      k from source port 40000 + k mod F (F flows, so a multiqueue TAP spreads them over its
      queues by flow hash; default 1: an ephemeral port); prints
      `host: send dst=... sent=N seconds=S pps=P`.
  net-host.py recv PORT [--seconds S] [--expect N]
      receives test datagrams on PORT for S seconds (or until --expect of them arrived,
      then 0.5 s of quiet), checks each; prints `host: recv listening port=P` once bound, then
      `host: recv port=P received=N lost=L late=K bad=B pps=R` and exits 1 on bad datagrams,
      on nothing received, or on fewer than --expect.
  net-host.py ping DST [--count N] [--size B] [--interval-ms I] [--timeout-ms T]
      ICMP echo requests over a raw socket (root; no ping binary needed); prints
      `host: ping dst=... sent=N received=M rtt_us min/median/max=...`, exits 1 on any loss.
  net-host.py echo DST PORT [--count N] [--size B] [--timeout-ms T]
      sends test datagrams to DST:PORT one at a time and waits for each to come back unchanged
      (against net.echo); prints `host: echo dst=... sent=N received=M rtt_us min/median/max=...`
      and exits 1 unless every one came back.

Test payload (all integers big-endian):
  0..4 "TVN1", 4..8 sequence number, 8..12 payload length, 12..16 zlib CRC-32 of bytes 16..,
  16.. byte k = (seq + k) & 0xff.
"""
import argparse
import socket
import struct
import sys
import time
import zlib

MAGIC = b"TVN1"
HDR = 16


def payload(seq, size):
    body = bytes(((seq + k) & 0xFF) for k in range(HDR, size))
    return MAGIC + struct.pack(">III", seq, size, zlib.crc32(body)) + body


def check(data):
    """The sequence number of a good test payload, else None."""
    if len(data) < HDR or data[:4] != MAGIC:
        return None
    seq, size, crc = struct.unpack(">III", data[4:16])
    if size != len(data) or zlib.crc32(data[16:]) != crc:
        return None
    return seq


def send(args):
    socks = []
    for f in range(args.flows):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if args.flows > 1:
            s.bind(("0.0.0.0", 40000 + f))
        socks.append(s)
    bodies = {}
    interval = 1.0 / args.pps if args.pps else 0.0
    start = time.monotonic()
    end = start + args.seconds if args.seconds else None
    seq = 0
    nxt = start
    while (args.count is None or seq < args.count) and (end is None or time.monotonic() < end):
        if interval:
            now = time.monotonic()
            if now < nxt:
                time.sleep(nxt - now)
            nxt += interval
        key = seq & 0xFF
        if key not in bodies:
            bodies[key] = payload(seq, args.size)[HDR:]
        body = bodies[key]
        data = MAGIC + struct.pack(">III", seq, args.size, zlib.crc32(body)) + body
        try:
            socks[seq % len(socks)].sendto(data, (args.dst, args.port))
        except OSError as e:  # e.g. ENOBUFS under load: count it as not sent
            print(f"host: send error {e}", file=sys.stderr)
            continue
        seq += 1
    took = time.monotonic() - start
    print(f"host: send dst={args.dst}:{args.port} size={args.size} sent={seq} "
          f"seconds={took:.3f} pps={seq / took if took else 0:.0f}")
    return 0


def recv(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("0.0.0.0", args.port))
    s.settimeout(0.1)
    print(f"host: recv listening port={args.port}", flush=True)
    received = bad = lost = late = 0
    expected = 0
    first = last = None
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        if args.expect and received >= args.expect and last and time.monotonic() - last > 0.5:
            break
        try:
            data, _ = s.recvfrom(65536)
        except socket.timeout:
            continue
        now = time.monotonic()
        seq = check(data)
        if seq is None:
            bad += 1
            continue
        received += 1
        first = first or now
        last = now
        if seq >= expected:
            lost += seq - expected
            expected = seq + 1
        else:
            late += 1
            lost = max(0, lost - 1)
    span = (last - first) if received > 1 else 0
    pps = (received - 1) / span if span else 0
    print(f"host: recv port={args.port} received={received} lost={lost} late={late} "
          f"bad={bad} pps={pps:.0f}")
    if bad or not received or (args.expect and received < args.expect):
        return 1
    return 0


def echo(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(args.timeout_ms / 1000)
    rtts = []
    for seq in range(args.count):
        data = payload(seq, args.size)
        t0 = time.monotonic()
        s.sendto(data, (args.dst, args.port))
        try:
            while True:
                back, _ = s.recvfrom(65536)
                if back == data:
                    rtts.append((time.monotonic() - t0) * 1e6)
                    break
        except socket.timeout:
            pass
    rtts.sort()
    stats = "/".join(f"{v:.0f}" for v in (rtts[0], rtts[len(rtts) // 2], rtts[-1])) if rtts else "-"
    print(f"host: echo dst={args.dst}:{args.port} sent={args.count} received={len(rtts)} "
          f"rtt_us min/median/max={stats}")
    return 0 if len(rtts) == args.count else 1


def inet_csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ping(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = 0x6874
    rtts = []
    for seq in range(args.count):
        data = bytes((seq + k) & 0xFF for k in range(args.size))
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        pkt = struct.pack("!BBHHH", 8, 0, inet_csum(hdr + data), ident, seq) + data
        t0 = time.monotonic()
        s.sendto(pkt, (args.dst, 0))
        deadline = t0 + args.timeout_ms / 1000
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                print(f"host: timeout seq={seq}")
                break
            s.settimeout(left)
            try:
                back, _ = s.recvfrom(65536)
            except socket.timeout:
                continue
            ihl = (back[0] & 0xF) * 4
            icmp = back[ihl:]
            if len(icmp) >= 8 and icmp[0] == 0 and struct.unpack("!HH", icmp[4:8]) == (ident, seq):
                if icmp[8:] == data and inet_csum(icmp) == 0:
                    rtts.append((time.monotonic() - t0) * 1e6)
                else:
                    print(f"host: bad reply seq={seq}")
                break
        time.sleep(args.interval_ms / 1000)
    rtts.sort()
    stats = "/".join(f"{v:.0f}" for v in (rtts[0], rtts[len(rtts) // 2], rtts[-1])) if rtts else "-"
    print(f"host: ping dst={args.dst} sent={args.count} received={len(rtts)} "
          f"rtt_us min/median/max={stats}")
    return 0 if len(rtts) == args.count else 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("send")
    a.add_argument("dst")
    a.add_argument("port", type=int)
    a.add_argument("--count", type=int)
    a.add_argument("--pps", type=float, default=0)
    a.add_argument("--size", type=int, default=64)
    a.add_argument("--seconds", type=float)
    a.add_argument("--flows", type=int, default=1)
    a = sub.add_parser("recv")
    a.add_argument("port", type=int)
    a.add_argument("--seconds", type=float, default=10)
    a.add_argument("--expect", type=int)
    a = sub.add_parser("ping")
    a.add_argument("dst")
    a.add_argument("--count", type=int, default=5)
    a.add_argument("--size", type=int, default=56)
    a.add_argument("--interval-ms", type=float, default=0)
    a.add_argument("--timeout-ms", type=float, default=1000)
    a = sub.add_parser("echo")
    a.add_argument("dst")
    a.add_argument("port", type=int)
    a.add_argument("--count", type=int, default=10)
    a.add_argument("--size", type=int, default=64)
    a.add_argument("--timeout-ms", type=float, default=1000)
    args = p.parse_args()
    if args.cmd != "ping" and getattr(args, "size", HDR) < HDR:
        p.error(f"--size must be at least {HDR}")
    if args.cmd == "send" and args.count is None and args.seconds is None:
        p.error("send needs --count or --seconds")
    return {"send": send, "recv": recv, "echo": echo, "ping": ping}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
