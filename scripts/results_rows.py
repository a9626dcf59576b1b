"""Shared pieces of scripts/results-summary.py: reading results and formatting figures, and the
headline rows of the comparison runs that have scripts of their own (results/peers/ by
scripts/results-peers.sh, results/peers/kafka/, results/presence/ by scripts/results-presence.sh).
Each row is made from those runs' own summary files, so regenerating the headline block keeps
them."""

import json
import os
import time


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def num(v, digits=0):
    if v is None:
        return "n/a"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ms(v):
    if v is None:
        return "n/a"
    return f"{v:.3g} ms" if v < 100 else f"{v:,.0f} ms"


def peers_rows(out):
    """The headline rows of results/peers/ (scripts/results-peers.sh), when it has been run."""
    sm = load(os.path.join(out, "peers", "summary.json"))
    if not sm:
        return []
    names = {"socketio": "Socket.IO", "sockudo": "Sockudo", "nodews": "Node ws + ioredis",
             "naive": "naive tokio + redis-rs", "ours-single": "ours standalone"}
    rows = []
    for rate in sm.get("rates", []):
        parts = []
        for s, label in names.items():
            r = sm["systems"].get(s, {}).get(str(rate))
            if r and r.get("total_vs_ours"):
                parts.append(f"{label} {r['total_vs_ours']:.2f}x{failed(r)}")
        ours = sm["systems"].get("ours", {}).get(str(rate))
        if ours and parts:
            rows.append(
                f"| ours (2 nodes on Redis) vs the peers at {num(rate)} msg/s: server + Redis CPU per delivery, peer ÷ ours "
                f"| {num(ours['server_us_median'] + ours['redis_us_median'], 1)} µs for ours; " + ", ".join(parts)
                + f"{when(out, 'peers', 'ours', rate, ours)} | median of the rounds, each on 2 nodes on the same Redis; how they ran and what is noise: [peers](peers/README.md) |")
    rows.extend(kafka_row(out))
    return rows


def failed(r):
    """` (fails verification: ...)` when a round of a peers summary entry did not verify."""
    bad = [x for x in r.get("rounds", []) if not x.get("ok", True)]
    if not bad:
        return ""
    what = [w for w, k in (("loss", "lost"), ("duplication", "duplicated"), ("reordering", "reordered"))
            if any(x.get(k) for x in bad)]
    return f" (fails verification: {', '.join(what) or 'see its rounds'})"


def when(out, *path_and_entry):
    """` (N rounds, DATE)` of a peers summary entry, the date from its first round's result."""
    *path, rate, entry = path_and_entry
    r = load(os.path.join(out, *path, f"rate-{rate}", "round-1", "result.json"))
    date = time.strftime(", %Y-%m-%d", time.gmtime(r["started_at_unix"])) if r else ""
    return f" ({len(entry.get('rounds', []))} rounds{date})"


def kafka_row(out):
    """The headline row of results/peers/kafka/ (ours-kafka next to nodews-kafka)."""
    sm = load(os.path.join(out, "peers", "kafka", "summary.json"))
    if not sm:
        return []
    parts, last = [], None
    for rate in sm.get("rates", []):
        ours = sm["systems"].get("ours-kafka", {}).get(str(rate))
        node = sm["systems"].get("nodews-kafka", {}).get(str(rate))
        if ours and node and node.get("total_vs_ours"):
            parts.append(f"{num(rate)} msg/s: {num(ours['server_us_median'] + ours['redis_us_median'], 1)} µs "
                         f"for ours, Node {node['total_vs_ours']:.2f}x{failed(node)}")
            last = (rate, ours)
    if not parts:
        return []
    rows = [x for s in ("ours-kafka", "nodews-kafka") for x in sm["systems"].get(s, {}).get("pg_rows", [])]
    same = sum(1 for x in rows if x["rows"] == x["acked"])
    return [
        "| ours with Kafka + persister vs the classic stack with Kafka (Node ws + ioredis + node-rdkafka + Node persister): "
        "server + Redis CPU per delivery, peer ÷ ours | " + "; ".join(parts)
        + f"; rows in PostgreSQL = acked in {same} of {len(rows)} system-rounds"
        + when(out, "peers", "kafka", "ours-kafka", *last)
        + " | broker and PostgreSQL CPU in their own columns; another run than the rows above: compare within it; [peers/kafka](peers/kafka/README.md) |"]


def presence_rows(out):
    """The headline row of results/presence/ (scripts/results-presence.sh), when it has been run."""
    mix = load(os.path.join(out, "presence", "mix", "result.json"))
    lst = load(os.path.join(out, "presence", "presence-list.json"))
    if not mix or not mix.get("social"):
        return []
    s = mix["social"]
    listed = f"; a 10,000-member room's list p99 {ms(lst['round_trip']['p99_ms'])}" if lst else ""
    return [
        f"| v1.1 presence event latency across nodes, beside {num(mix['scenario']['rate'])} msg/s | "
        f"p99 {ms(s['presence_cross_node']['p99_ms'])} (p50 {ms(s['presence_cross_node']['p50_ms'])}){listed} | "
        "2-node cluster, churning users verified online/offline in turn; Redis per connect/disconnect and throughput "
        "with 5,000 present users: [presence](presence/README.md) |"]
