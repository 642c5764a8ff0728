#!/usr/bin/env python3
"""What hostile and idle clients make a node hold (BENCHMARKS.md, "Hardening").

Usage: scripts/hostile-clients.py PID HOST:PORT [CONNECTIONS] [BODY_BYTES]

PID is the node's process (its RSS is read from /proc), HOST:PORT its RPC
address (plain TCP: start it with --insecure, and with --max-connections
and --max-connections-per-identity above CONNECTIONS). Three phases, each
printing the node's RSS:
  1. CONNECTIONS idle connections open, wait, and close;
  2. CONNECTIONS connections each send a frame header claiming a 64 MiB
     message, then nothing;
  3. each then sends BODY_BYTES (default 1 MiB) of that body, as far as
     the server reads it (it stops reading once --max-inflight-bytes is
     spent); then all close.
"""
import os
import socket
import struct
import sys
import time


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise SystemExit("no VmRSS")


def connect_all(addr, n):
    socks = []
    for _ in range(n):
        s = socket.create_connection(addr)
        socks.append(s)
    return socks


def settle(pid, seconds=2.0):
    time.sleep(seconds)
    return rss_mib(pid)


def main():
    pid = int(sys.argv[1])
    host, port = sys.argv[2].rsplit(":", 1)
    addr = (host, int(port))
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    body = int(sys.argv[4]) if len(sys.argv) > 4 else 1 << 20
    start = rss_mib(pid)
    print(f"start: node RSS {start:.1f} MiB")

    base = rss_mib(pid)
    idle = connect_all(addr, n)
    print(f"1. {n} idle connections open: node RSS {settle(pid):.1f} MiB")
    for s in idle:
        s.close()
    end = settle(pid)
    print(
        f"   closed: node RSS {end:.1f} MiB ({(end - base) / base * 100:+.1f}% vs "
        f"{base:.1f} MiB before they opened)"
    )

    socks = connect_all(addr, n)
    header = struct.pack("<II", 0, (64 << 20) // 8)
    for s in socks:
        s.sendall(header)
    print(f"2. {n} headers claiming 64 MiB each: node RSS {settle(pid):.1f} MiB")

    chunk = b"\0" * 65536
    sent = 0
    for s in socks:
        s.setblocking(False)
    deadline = time.time() + 20
    pending = {s: body for s in socks}
    closed_by_node = 0
    while pending and time.time() < deadline:
        progressed = False
        for s in list(pending):
            try:
                k = s.send(chunk[: min(len(chunk), pending[s])])
            except BlockingIOError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                # Closed by the node: no whole first message within 10 s.
                closed_by_node += 1
                del pending[s]
                continue
            sent += k
            progressed = True
            pending[s] -= k
            if pending[s] == 0:
                del pending[s]
        if not progressed:
            time.sleep(0.05)
    print(
        f"3. {sent / 2**20:.0f} MiB of bodies sent ({len(pending)} senders blocked by "
        f"backpressure, {closed_by_node} closed by the node): node RSS {settle(pid):.1f} MiB"
    )
    for s in socks:
        s.close()
    print(f"   all closed: node RSS {settle(pid):.1f} MiB")
    # While the budget is spent no socket is read, so the closes are seen
    # when the first-message timeout (10 s) ends those connections.
    print(f"   12 s later: node RSS {settle(pid, 12):.1f} MiB")


if __name__ == "__main__":
    main()
