"""Prints the race's table from its JSON lines: medians over rounds, each
proglog cell against the best peer in it, and the servers' memory and CPU."""
import json
import statistics
import sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
runs = defaultdict(list)
servers = defaultdict(list)
for r in rows:
    key = (r["system"], r["label"], r["size"])
    if r["op"] == "server":
        servers[key].append(r)
    else:
        runs[key + (r["op"], r["window"])].append(r)


def med(key, field):
    values = [r[field] for r in runs.get(key, [])]
    return statistics.median(values) if values else None


def fmt_rate(v):
    return "-" if v is None else (f"{v / 1e3:.1f} k/s" if v < 1e6 else f"{v / 1e6:.2f} M/s")


if any("@" in r["label"] for r in rows):
    # `race.sh placement`: the W=1 cells with server and client pinned.
    rounds = len({r["round"] for r in rows})
    print(f"\nW=1, 256 B, server and client pinned to the same vCPU or to two; rate (p50 / p99 µs); medians of {rounds} rounds")
    print("| system | same vCPU: produce | same vCPU: consume | two vCPUs: produce | two vCPUs: consume |")
    print("|---|---|---|---|---|")
    for system, variant, name in (("proglog", "plain", "proglog"), ("proglog", "nopoll", "proglog --busy-poll-us 0"),
                                  ("nats", "plain", "NATS JetStream"), ("redis", "plain", "Redis Streams")):
        out = []
        for pin in ("same", "split"):
            for op in ("produce", "consume"):
                k = (system, f"{variant}@{pin}", 256, op, 1)
                rate = med(k, "rate")
                out.append("-" if rate is None else f"{fmt_rate(rate)} ({med(k, 'p50_us'):.0f} / {med(k, 'p99_us'):.0f})")
        print(f"| {name} | " + " | ".join(out) + " |")
    sys.exit(0)

cells = [("produce", 1), ("produce", 64), ("consume", 1), ("consume", 64)]
for size in (256, 4096):
    print(f"\n{size} B records, plain TCP (mTLS for proglog-tls); rate (p50 / p99 µs); medians of {len(servers[('proglog', 'plain', size)])} rounds")
    print(f"| cell | proglog | proglog mTLS | NATS JetStream | Redis Streams | proglog / best peer | mTLS / plain | mTLS / plain by round |")
    print("|---|---|---|---|---|---|---|---|")
    for op, w in cells:
        def cell(system, label):
            k = (system, label, size, op, w)
            rate = med(k, "rate")
            if rate is None:
                return "-", None
            return f"{fmt_rate(rate)} ({med(k, 'p50_us'):.0f} / {med(k, 'p99_us'):.0f})", rate
        p, pr = cell("proglog", "plain")
        t, tr = cell("proglog", "tls")
        n, nr = cell("nats", "plain")
        r, rr = cell("redis", "plain")
        best = max(x for x in (nr, rr) if x is not None) if (nr or rr) else None
        ratio = f"{pr / best:.2f}" if pr and best else "-"
        tls = f"{tr / pr:.2f}" if pr and tr else "-"
        # Paired: each round's mTLS run against the plain run next to it
        # (race.sh runs them back to back), median and range over rounds.
        plain_by_round = {x["round"]: x["rate"] for x in runs.get(("proglog", "plain", size, op, w), [])}
        paired = sorted(x["rate"] / plain_by_round[x["round"]]
                        for x in runs.get(("proglog", "tls", size, op, w), []) if plain_by_round.get(x["round"]))
        by_round = f"{statistics.median(paired):.2f} ({paired[0]:.2f}-{paired[-1]:.2f})" if paired else "-"
        print(f"| {op} W={w} | {p} | {t} | {n} | {r} | {ratio} | {tls} | {by_round} |")
    print("| server peak RSS / CPU s | " + " | ".join(
        "{:.0f} MiB / {:.1f}".format(
            statistics.median(s["peak_rss_kib"] for s in servers[(sys_, lab, size)]) / 1024,
            statistics.median(s["cpu_seconds"] for s in servers[(sys_, lab, size)]))
        if servers[(sys_, lab, size)] else "-"
        for sys_, lab in (("proglog", "plain"), ("proglog", "tls"), ("nats", "plain"), ("redis", "plain"))) + " | | | |")
    # The load generator's CPU over the cell's four runs (its client's cost).
    def client_cpu(sys_, lab):
        per_round = defaultdict(float)
        for (s_, l_, z_, _op, _w), rs in runs.items():
            if (s_, l_, z_) == (sys_, lab, size):
                for r in rs:
                    per_round[r["round"]] += r.get("client_cpu_seconds") or 0.0
        return f"{statistics.median(per_round.values()):.1f}" if per_round else "-"
    print("| client CPU s | " + " | ".join(client_cpu(s_, l_) for s_, l_ in (
        ("proglog", "plain"), ("proglog", "tls"), ("nats", "plain"), ("redis", "plain"))) + " | | | |")

print("\nfsync on every write (proglog --sync always, JetStream sync_interval: always), 256 B, produce")
print("| cell | proglog | NATS JetStream | proglog / NATS |")
print("|---|---|---|---|")
for w in (1, 64):
    p = med(("proglog", "sync", 256, "produce", w), "rate")
    n = med(("nats", "sync", 256, "produce", w), "rate")
    print(f"| produce W={w} | {fmt_rate(p)} | {fmt_rate(n)} | {p / n:.2f} |" if p and n else f"| produce W={w} | {fmt_rate(p)} | {fmt_rate(n)} | - |")

print("\nproglog produce: the batching producer (zero linger; the tables above) against one `produce` call per record, plain TCP")
print("| cell | batching producer | one call per record | producer / calls |")
print("|---|---|---|---|")
for size in (256, 4096):
    for w in (1, 64):
        def cell(label):
            k = ("proglog", label, size, "produce", w)
            rate = med(k, "rate")
            return ("-", None) if rate is None else (f"{fmt_rate(rate)} ({med(k, 'p50_us'):.0f} / {med(k, 'p99_us'):.0f})", rate)
        b, br = cell("plain")
        c, cr = cell("calls")
        print(f"| {size} B produce W={w} | {b} | {c} | {f'{br / cr:.2f}' if br and cr else '-'} |")
