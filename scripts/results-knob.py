#!/usr/bin/env python3
"""README.md of a scripts/results-knob.sh run: per rate and value, the medians over rounds of
server CPU per delivery (and its multiple of the kernel floor), ack and delivery latency.

    python3 scripts/results-knob.py OUT VAR MODE ROUNDS
"""

import json
import statistics
import sys
from pathlib import Path


def main(out, var, mode, rounds):
    out = Path(out)
    rows = {}
    for d in sorted(out.glob("*-*-round-*")):
        value, rate, _, _ = d.name.rsplit("-", 3)
        r = json.loads((d / "result.json").read_text())
        rows.setdefault((int(rate), value), []).append(r)
    med = statistics.median
    where = ("the local cluster of `scripts/cluster.sh` (2 nodes on Redis, Kafka in the path, the "
             "persister), brought down and up for every value" if mode == "cluster"
             else "one `chat-server --threads 2`, started afresh for every value")
    md = [f"# `{var}`: server CPU and latency", "",
          f"Made by `scripts/results-knob.sh {var} \"...\" {mode}`: {where}; rounds interleaved, "
          f"100 rooms × 10 members, one sender per room, 100 B bodies, 2 + 10 s per run, the "
          f"load generator on the same 2 cores. Medians of {rounds} rounds, (min–max).", "",
          "| rate msg/s | value | server CPU µs / delivery | × kernel floor | ack p50 / p99 ms | delivery p99 ms | CPU pressure | verified |",
          "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    def order(kv):
        (rate, value), _ = kv
        try:
            return rate, 0, float(value), ""
        except ValueError:
            return rate, 1, 0.0, value

    for (rate, value), rs in sorted(rows.items(), key=order):
        cpu = [x["server_cpu_us_per_delivered"] or 0 for x in rs]
        floor = [x.get("server_cpu_vs_floor") or 0 for x in rs]
        ack = [x["latency"]["ack"] for x in rs]
        md.append(
            f"| {rate} | {value} | {med(cpu):.1f} ({min(cpu):.1f}–{max(cpu):.1f}) | {med(floor):.1f} | "
            f"{med([a['p50_ms'] for a in ack]):.2f} / {med([a['p99_ms'] for a in ack]):.2f} | "
            f"{med([x['latency']['delivery']['p99_ms'] for x in rs]):.2f} | "
            f"{100 * med([x['loadgen'].get('cpu_pressure') or 0 for x in rs]):.0f} % | "
            f"{sum(x['verdict']['ok'] for x in rs)}/{len(rs)} |")
    (out / "README.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
