#!/usr/bin/env python3
"""results/presence/README.md from what scripts/results-presence.sh wrote (figures.jsonl and
the loadgen result directories): the v1.1 figures, medians over rounds with their spread."""

import json
import statistics
import sys
from pathlib import Path


def load(out, d):
    return json.loads((out / d / "result.json").read_text())


def spread(xs, fmt="{:.2f}"):
    if not xs:
        return "n/a"
    m = statistics.median(xs)
    return f"{fmt.format(m)} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def main(out):
    out = Path(out)
    rows = [json.loads(l) for l in (out / "figures.jsonl").read_text().splitlines() if l]
    md = ["# v1.1 figures: presence, typing, read pointers", ""]
    md += [
        "Made by `scripts/results-presence.sh` on the local cluster of `scripts/cluster.sh` (two",
        "nodes on one Redis, Kafka, PostgreSQL and the persister), load generator on the same",
        "machine. Medians over rounds, (min–max) after them.",
        "",
    ]
    mix = next((r for r in rows if r["part"] == "mix"), None)
    if mix:
        r = load(out, mix["dir"])
        s = r["social"]
        c = s["counters"]
        md += ["## Presence latency beside 400 msg/s (`mix/`)", ""]
        md += [
            f"{r['scenario']['rate']:.0f} msg/s in {r['scenario']['rooms']} rooms of "
            f"{r['scenario']['members']}, with {r['scenario']['churn']} churning users "
            f"({c['churn_joins']} joins, {c['churn_leaves']} leaves), {c['typing_sent']} typing "
            f"sent, {c['read_sent']} reads. Verdict: "
            + ("**OK**" if r["verdict"]["ok"] else "**FAILED** " + ", ".join(r["verdict"]["problems"]))
            + ".",
            "",
            "| presence event, from join/close | events | p50 ms | p99 ms | p99.9 ms | max ms |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, key in [("device on the churner's node", "presence_same_node"),
                          ("device on the other node", "presence_cross_node")]:
            p = s[key]
            md.append(f"| {name} | {p['count']} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | "
                      f"{p['p99_9_ms']:.2f} | {p['max_ms']:.2f} |")
        d = r["latency"]["delivery"]
        md += ["", f"Messages meanwhile: delivery p99 {d['p99_ms']:.2f} ms, "
               f"{r['counters']['lost']} lost; server CPU {r['server_cpu_us_per_delivered'] or 0:.1f} µs "
               "per delivery.", ""]

    churn = [r for r in rows if r["part"] == "churn"]
    if churn:
        md += ["## Redis per connect/disconnect (`churn-*`)", ""]
        md += ["| round | joins + leaves | Redis calls, churn run | calls, baseline | calls per edge | Redis CPU µs per edge |",
               "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        per_edge, cpu_edge, by_cmd = [], [], {}
        for rnd in sorted({r["round"] for r in churn}):
            a = next(r for r in churn if r["round"] == rnd and r["churn"] > 0)
            b = next(r for r in churn if r["round"] == rnd and r["churn"] == 0)
            ra, rb = load(out, a["dir"]), load(out, b["dir"])
            sc = ra["social"]["counters"]
            edges = sc["churn_joins"] + sc["churn_leaves"]
            delta = lambda x: {k: v - x["before"].get(k, 0) for k, v in x["after"].items()}
            da, db = delta(a), delta(b)
            calls_a, calls_b = sum(da.values()), sum(db.values())
            pe = (calls_a - calls_b) / edges
            ce = ((ra["redis_cpu_seconds"] or 0) - (rb["redis_cpu_seconds"] or 0)) * 1e6 / edges
            per_edge.append(pe)
            cpu_edge.append(ce)
            for k in da:
                by_cmd.setdefault(k, []).append((da[k] - db.get(k, 0)) / edges)
            md.append(f"| {rnd} | {edges} | {calls_a} | {calls_b} | {pe:.2f} | {ce:.1f} |")
        md += ["", f"**Median: {spread(per_edge)} Redis commands and {spread(cpu_edge, '{:.1f}')} µs "
               "of Redis CPU per connect or disconnect** (a join or a leave of a room by a user's "
               "only connection).", "",
               "By command (median per edge): " + ", ".join(
                   f"`{k}` {statistics.median(v):.2f}" for k, v in
                   sorted(by_cmd.items(), key=lambda kv: -statistics.median(kv[1]))
                   if statistics.median(v) >= 0.05) + ".", ""]

    present = [r for r in rows if r["part"] == "present"]
    if present:
        wo = [r["acked_per_s"] for r in present if r["present"] == 0]
        wi = [r["acked_per_s"] for r in present if r["present"] > 0]
        n = max(r["present"] for r in present)
        md += ["## Presence held while messages flow", "",
               f"`loadgen flood` (closed loop, 20 connections, window 64) on both nodes, rounds "
               f"interleaved, with and without {n:,} present users held by another loadgen run.", "",
               "| | accepted msg/s, median (min–max) |", "| --- | ---: |",
               f"| without present users | {spread(wo, '{:.0f}')} |",
               f"| with {n:,} present users | {spread(wi, '{:.0f}')} |", ""]
        if wo and wi:
            md += [f"Ratio with/without: {statistics.median(wi) / statistics.median(wo):.2f}.", ""]

    lst = out / "presence-list.json"
    if lst.exists():
        l = json.loads(lst.read_text())
        p = l["round_trip"]
        md += ["## A large room's presence list", "",
               f"{l['members']:,} members on both nodes (joined in {l['fill_seconds']:.1f} s); one asks "
               f"`presence` {p['count']} times: round trip p50 {p['p50_ms']:.2f} ms, p99 "
               f"{p['p99_ms']:.2f} ms, max {p['max_ms']:.2f} ms; `count` {l['count']}, the answer "
               f"{l['answer_bytes']:,} bytes (1,000 users listed).", ""]
    (out / "README.md").write_text("\n".join(md))
    print((out / "README.md").read_text())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/presence")
