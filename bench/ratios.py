#!/usr/bin/env python3
"""Prints the medians of the last `cargo bench -p chat-bench` run as a Markdown table.

Reads criterion's `target/criterion/<group>/<function>/<parameter>/new/estimates.json` (the
median point estimate, in ns per iteration) and `benchmark.json` (group, function, parameter,
throughput). Rows are one (group, parameter); each function gets its median and its time
divided by the reference's (see REFERENCE; otherwise the first function named "ours..."):

    python3 bench/ratios.py [target/criterion]

A ratio above 1 means that function takes that many times longer than the reference.
"""

import json
import re
import os
import sys
from collections import OrderedDict


# The row's reference: the server's own path where a group has several "ours" (the batching
# the server does, the encoder `Msg::frame` uses, the persister's COPY), and for Redis the
# unbatched call, so that the column reads as what batching buys.
REFERENCE = {
    "fanout": "ours_mailbox_turn64",
    "framing/encode": "ours_encode_text_with",
    "framing/read_masked": "ours",
    "redis_batch/publish_lua": "evalsha_per_round_trip",
    "pg_copy": "ours_binary_copy",
}


def natural(text):
    """Sort key: sizes by bytes (32B < 256B < 4KiB), other numbers by value, known inputs in
    the order the suites define them."""
    order = ["join", "send_100B", "send_4KiB", "history", "resume"]
    if text in order:
        return (0, order.index(text), ())
    m = re.match(r"^(\d+)(B|KiB)(.*)$", text)
    if m:
        return (1, int(m.group(1)) * (1024 if m.group(2) == "KiB" else 1), natural(m.group(3)))
    parts = re.split(r"(\d+)", text)
    return (2, 0, tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p))


def fmt_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def fmt_rate(per_s, unit):
    for prefix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if per_s >= scale:
            return f"{per_s / scale:.3g} {prefix}{unit}/s"
    return f"{per_s:.3g} {unit}/s"


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"
    rows = OrderedDict()
    for dirpath, _, files in sorted(os.walk(root)):
        if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            meta = json.load(f)
        with open(os.path.join(dirpath, "estimates.json")) as f:
            median = json.load(f)["median"]["point_estimate"]
        key = (meta["group_id"], meta.get("value_str") or "")
        rows.setdefault(key, []).append((meta["function_id"], median, meta.get("throughput")))
    print("| group | input | implementation | median | throughput | time ÷ ref |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (group, value), entries in sorted(rows.items(), key=lambda kv: (kv[0][0], natural(kv[0][1]))):
        names = [name for name, _, _ in entries]
        ref_name = REFERENCE.get(group)
        if ref_name not in names:
            ref_name = next((n for n in names if n.startswith("ours")), None)
        reference = next((m for n, m, _ in entries if n == ref_name), None)
        # Ours first, then the others, each in name order.
        entries.sort(key=lambda e: (not e[0].startswith("ours"), natural(e[0])))
        for name, median, throughput in entries:
            rate = ""
            if throughput:
                (kind, amount), = throughput.items()
                unit = "B" if kind == "Bytes" else "elem"
                rate = fmt_rate(amount / (median / 1e9), unit)
            ratio = f"{median / reference:.2f}" if reference else ""
            label = f"**{name}** (ref)" if name == ref_name else name
            print(f"| {group} | {value} | {label} | {fmt_time(median)} | {rate} | {ratio} |")


if __name__ == "__main__":
    main()
