#!/usr/bin/env python3
"""README.md of a scripts/results-transport.sh run: per body and combination (ws/wss x deflate
off/on), the medians over rounds of server CPU and wire bytes per delivery, and their ratios to
ws without deflate.

    python3 scripts/results-transport.py OUT ROUNDS
"""

import json
import statistics
import sys
from pathlib import Path

COMBOS = [(False, False), (False, True), (True, False), (True, True)]


def name(tls, deflate):
    return f"{'wss' if tls else 'ws'}, deflate {'on' if deflate else 'off'}"


def main(out, rounds):
    out = Path(out)
    runs = [json.loads(l) for l in (out / "runs.jsonl").read_text().splitlines() if l.strip()]
    rows = {}
    for r in runs:
        rows.setdefault((r["body"], r["tls"], r["deflate"]), []).append(r)
    med = statistics.median
    first = runs[0]
    meta_file = out / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    md = ["# TLS × permessage-deflate: server CPU and wire bytes per delivery", "",
          f"Made by `scripts/results-transport.sh`: `loadgen transport` against a fresh "
          f"`chat-server --threads 1` per run (wss: a self-signed RSA 2048 certificate, TLS 1.3), "
          f"{first['conns']:,} connections in rooms of {first['room_size']}, one sender per room, "
          f"{first['rate']:.0f} msg/s in total (open loop), {first['warmup']:g} s warm-up then "
          f"{first['duration']:g} s measured; bodies of chat-like words. {rounds} rounds, the four "
          f"combinations interleaved (their order rotated each round); medians over rounds, "
          f"(min–max).", "",
          f"Run of {meta.get('date', '?')}, commit {meta.get('commit', '?')}; {meta.get('cpu', '?')}, "
          f"{meta.get('cores', '?')} cores shared by the server and the load generator; load "
          f"average at the start {meta.get('loadavg', '?')}.", "",
          "* **server CPU µs / delivery**: the server's utime + stime (`/proc/PID/stat`, 10 ms "
          "ticks) over the measured window, divided by the deliveries the clients received in it.",
          "* **wire B / delivery**: TCP bytes the clients read in the window (ciphertext under TLS; "
          "the sender's acks, one per 10 deliveries, included) per delivery; **msg B** is the "
          "`msg` JSON each delivery carried once inflated.",
          "* deflate: the client offers `permessage-deflate; client_max_window_bits`; the server "
          "answers `server_no_context_takeover` and compresses each message once per core (zlib "
          "level 3, no context between messages); the clients' sends go uncompressed.",
          "",
          "| body | transport | server CPU µs / delivery | × ws | wire B / delivery | × ws | msg B | client CPU µs / delivery | delivery p50 / p99 ms | verified |",
          "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for body in sorted({b for b, _, _ in rows}):
        base = rows.get((body, False, False))
        base_cpu = med([x["server_cpu_us_per_delivery"] or 0 for x in base]) if base else None
        base_wire = med([x["wire_bytes_per_delivery"] for x in base]) if base else None
        for tls, deflate in COMBOS:
            rs = rows.get((body, tls, deflate))
            if not rs:
                continue
            cpu = [x["server_cpu_us_per_delivery"] or 0 for x in rs]
            wire = [x["wire_bytes_per_delivery"] for x in rs]
            ratio = lambda v, b: f"{v / b:.2f}" if b else "–"
            ok = sum(x["lost"] == 0 and x["extra"] == 0 and x["errors"] == 0 for x in rs)
            md.append(
                f"| {body} | {name(tls, deflate)} | {med(cpu):.2f} ({min(cpu):.2f}–{max(cpu):.2f}) | "
                f"{ratio(med(cpu), base_cpu)} | {med(wire):.0f} ({min(wire):.0f}–{max(wire):.0f}) | "
                f"{ratio(med(wire), base_wire)} | {med([x['app_bytes_per_delivery'] for x in rs]):.0f} | "
                f"{med([x['client_cpu_us_per_delivery'] for x in rs]):.2f} | "
                f"{med([x['latency_p50_ms'] for x in rs]):.2f} / {med([x['latency_p99_ms'] for x in rs]):.2f} | "
                f"{ok}/{len(rs)} |")
    md += ["", "How to read it: compression is paid once per message per core and shared by the "
           "room's members on that core (divided by 10 here), while TLS encrypts every delivery "
           "on its own connection (with deflate, the compressed bytes). "
           "A TLS 1.3 record adds 22 bytes (5 header, 1 content type, 16 tag) to each write of "
           "the server. The server's CPU is read in 10 ms ticks, a few per cent of a window's "
           "server CPU at these rates: compare differences with the min–max, not the last digit.", "",
           "`runs.jsonl` holds every run's full result (`loadgen transport` JSON plus its round); "
           "`meta.json` the machine and commit."]
    (out / "README.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
