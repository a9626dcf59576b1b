#!/usr/bin/env python3
"""Where a message's CPU goes: NAME.accounting.md from what record.sh left.

    python3 flamegraphs/accounting.py OUT NAME RATE SECONDS DELIVERED LABEL...

For each recorded process LABEL it reads OUT/LABEL.stat.txt (`perf stat --per-thread -x,` of
task-clock, context-switches and raw_syscalls:sys_enter over the recorded SECONDS) and
OUT/LABEL.txt (top.py: the share of each category of frames), and OUT/NAME/result.json (the
loadgen run, with its kernel floor when it ran with --floor). Messages are RATE x SECONDS
(offered, open model: what was sent); deliveries are DELIVERED (the nodes' own counter over the
same seconds). Prints Markdown: per thread group, CPU us, context switches and syscalls per
message and per delivery; then the categories of the flamegraph as us per delivery.
"""

import json
import re
import sys
from collections import defaultdict
from pathlib import Path


def group(comm):
    """Thread name without its numbers: core-0 -> core-N, rdk:broker1 -> rdk:brokerN."""
    return re.sub(r"\d+", "N", comm)


def read_stat(path):
    threads = defaultdict(lambda: defaultdict(float))
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        f = line.split(",")
        if len(f) < 4 or f[1].startswith("<"):
            continue
        comm = f[0].rsplit("-", 1)[0]
        event = f[3]
        try:
            v = float(f[1])
        except ValueError:
            continue
        threads[group(comm)][event] += v
    return threads


def read_categories(path):
    cats, on = [], False
    for line in path.read_text().splitlines():
        if line.startswith("categories"):
            on = True
            continue
        if on:
            m = re.match(r"\s+([\d.]+) %\s+(.*)", line)
            if not m:
                break
            cats.append((m.group(2), float(m.group(1)) / 100))
    return cats


def main():
    out, name, rate, secs, delivered = sys.argv[1:6]
    labels = sys.argv[6:]
    out = Path(out)
    msgs = float(rate) * float(secs)
    deliveries = max(float(delivered), 1.0)
    result = json.loads((out / name / "result.json").read_text())
    print(f"# CPU accounting: {name}\n")
    print(f"{float(rate):.0f} msg/s offered for {secs} s recorded: {msgs:.0f} messages, "
          f"{deliveries:.0f} deliveries counted by the server. Verdict: "
          + ("OK" if result["verdict"]["ok"] else "FAILED " + ", ".join(result["verdict"]["problems"]))
          + f"; CPU pressure {100 * (result['loadgen'].get('cpu_pressure') or 0):.0f} %.\n")
    total_cpu = 0.0
    for label in labels:
        threads = read_stat(out / f"{label}.stat.txt")
        print(f"## {label}\n")
        print("| thread | CPU µs / message | CPU µs / delivery | context switches / message | syscalls / delivery |")
        print("| --- | ---: | ---: | ---: | ---: |")
        tot = defaultdict(float)
        for g, ev in sorted(threads.items(), key=lambda kv: -kv[1]["task-clock"]):
            if ev["task-clock"] <= 0:
                continue
            for k, v in ev.items():
                tot[k] += v
            us = ev["task-clock"] * 1000
            print(f"| {g} | {us / msgs:.1f} | {us / deliveries:.2f} | "
                  f"{ev['context-switches'] / msgs:.2f} | {ev['raw_syscalls:sys_enter'] / deliveries:.2f} |")
        us = tot["task-clock"] * 1000
        total_cpu += us
        print(f"| **all** | **{us / msgs:.1f}** | **{us / deliveries:.2f}** | "
              f"**{tot['context-switches'] / msgs:.2f}** | **{tot['raw_syscalls:sys_enter'] / deliveries:.2f}** |\n")
        cats = read_categories(out / f"{label}.txt")
        if cats:
            print("Flamegraph categories (overlapping), as µs per delivery:\n")
            print("| category | share | µs / delivery |\n| --- | ---: | ---: |")
            for c, share in cats:
                if share >= 0.005:
                    print(f"| {c} | {100 * share:.1f} % | {share * us / deliveries:.2f} |")
            print()
    print(f"**Server CPU per delivery, all recorded processes: {total_cpu / deliveries:.2f} µs.**")
    floor = result.get("floor")
    if floor:
        per = total_cpu / deliveries
        print(f" Kernel floor (loadgen --floor, same connections, frame size, rate and room size): "
              f"{floor['us_per_frame']:.2f} µs per frame with the writer's wake-ups, so **{per / floor['us_per_frame']:.1f}x "
              "the floor**" + (f"; the writes alone {floor['write_us_per_frame']:.2f} µs ({per / floor['write_us_per_frame']:.1f}x)"
                               if floor.get("write_us_per_frame") else "") + ".")


if __name__ == "__main__":
    main()
