#!/usr/bin/env python3
"""The table and charts of results/peers/ (scripts/results-peers.sh writes the runs).

Reads OUT/<system>/rate-<R>/round-<N>/result.json (server CPU from /proc of every process of
the system, Redis CPU from its pid, both over the load run after setup, per delivery), OUT/<system>/sweep/sweep.json and
OUT/<system>/idle/idle.json; writes OUT/summary.json, the block between the markers of
OUT/README.md (created when missing) and OUT/cpu-<R>.svg, OUT/p99-<R>.svg. Medians over the
rounds, with the spread (min-max); ratios are "the system / ours (2 nodes)", so 2.0x means the
system needs twice our CPU per delivery. The -kafka systems are compared with ours-kafka, and
their broker and PostgreSQL CPU (service-cpu.json) get columns of their own, not in the ratio.
rows-round-N.json (rows the persister wrote, messages acked) goes into a table of its own.
"""
import json
import os
import statistics
import sys
from pathlib import Path

ORDER = ["ours", "ours-single", "socketio", "sockudo", "nodews", "naive", "ours-kafka", "nodews-kafka"]
LABEL = {
    "ours": "ours, 2 nodes on Redis",
    "ours-single": "ours, standalone (1 process)",
    "socketio": "Socket.IO 4 + redis-adapter",
    "sockudo": "Sockudo (Pusher) + Redis adapter",
    "nodews": "Node.js ws + ioredis",
    "naive": "tokio + tungstenite + redis-rs",
    "ours-kafka": "ours, 2 nodes, Redis + Kafka + persister",
    "nodews-kafka": "Node.js ws + ioredis + node-rdkafka + Node persister",
}
# The baseline of each system's ratio: with Kafka in the path, ours with Kafka.
BASE = {"ours-kafka": "ours-kafka", "nodews-kafka": "ours-kafka"}
BEGIN = "<!-- peers:begin: scripts/peers-summary.py writes this block; edits inside it are lost -->"
END = "<!-- peers:end -->"


def load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def runs(out, system, rate):
    d = out / system / f"rate-{rate}"
    found = []
    for r in sorted(d.glob("round-*")) if d.is_dir() else []:
        res = load(r / "result.json")
        if not res or res.get("server_cpu_us_per_delivered") is None:
            continue
        c = res["counters"]
        lat = res["latency"]["delivery"]
        found.append({
            "round": r.name,
            "server_us": res["server_cpu_us_per_delivered"],
            "redis_us": res.get("redis_cpu_us_per_delivered") or 0.0,
            "p50": lat["p50_ms"], "p99": lat["p99_ms"], "p999": lat["p99_9_ms"],
            "delivered": c["delivered"], "expected": c["expected_deliveries"],
            "lost": c["lost"], "duplicated": c["duplicated"], "reordered": c["reordered"],
            "unacked": c["unacked"], "errors": c["send_errors"] + c["connect_errors"] + c["join_errors"],
            "ok": res["verdict"]["ok"], "loadgen_bound": res["loadgen"]["bottleneck"],
            "pressure": res["loadgen"].get("cpu_pressure"),
        })
        if res.get("floor") and res.get("server_cpu_vs_floor"):
            # `loadgen run --floor` (PEERS_LOADGEN_ARGS): the kernel's cost of the same frames.
            found[-1]["floor_us"] = res["floor"]["us_per_frame"]
            found[-1]["vs_floor"] = res["server_cpu_vs_floor"]
        svc = load(r / "service-cpu.json")
        if svc and c["delivered"]:
            found[-1]["broker_us"] = svc["broker_cpu_seconds"] * 1e6 / c["delivered"]
            found[-1]["pg_us"] = svc["pg_cpu_seconds"] * 1e6 / c["delivered"]
    return found


def med(xs):
    return statistics.median(xs) if xs else None


def spread(rs, key, fmt):
    xs = [r[key] for r in rs]
    if not xs:
        return "-"
    m = med(xs)
    return f"**{fmt(m)}** ({fmt(min(xs))}-{fmt(max(xs))})" if len(xs) > 1 else f"**{fmt(m)}**"


def f1(x):
    return f"{x:.1f}"


def ms(x):
    return f"{x:.3g}"


def bar_svg(path, title, unit, rows):
    """rows: (label, [(value, colour, legend)...]) stacked horizontally."""
    width, left, bar_h, gap = 760, 250, 22, 10
    total = max((sum(v for v, _, _ in parts) for _, parts in rows), default=1) or 1
    height = 50 + len(rows) * (bar_h + gap) + 30
    scale = (width - left - 90) / total
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{title}</text>']
    y = 40
    legends = {}
    for label, parts in rows:
        out.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{label}</text>')
        x = left
        for v, colour, legend in parts:
            w = max(v * scale, 0.5)
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}"/>')
            x += w
            legends[legend] = colour
        out.append(f'<text x="{x + 6:.1f}" y="{y + 15}">{sum(v for v, _, _ in parts):.3g} {unit}</text>')
        y += bar_h + gap
    lx = left
    for legend, colour in legends.items():
        out.append(f'<rect x="{lx}" y="{y + 4}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{lx + 16}" y="{y + 15}">{legend}</text>')
        lx += 16 + 8 * len(legend) + 20
    out.append("</svg>")
    Path(path).write_text("\n".join(out) + "\n")


def main(out):
    out = Path(out)
    systems = [s for s in ORDER if (out / s).is_dir()]
    rates = sorted({int(p.name[5:]) for s in systems for p in (out / s).glob("rate-*")})
    summary = {"systems": {}, "rates": rates}
    lines = []
    for rate in rates:
        table = {s: runs(out, s, rate) for s in systems}
        svc_cols = any("broker_us" in r for rs in table.values() for r in rs)
        floor_cols = any("floor_us" in r for rs in table.values() for r in rs)
        lines += [f"### {rate:,} msg/s offered ({rate * 10:,} deliveries/s)", "",
                  "| system | server CPU µs / delivery | Redis CPU µs / delivery | vs ours (server + Redis) "
                  + ("| kernel floor µs / frame | server ÷ floor " if floor_cols else "")
                  + ("| broker CPU µs / delivery | PostgreSQL CPU µs / delivery " if svc_cols else "")
                  + "| delivery p50 ms | p99 ms | p99.9 ms | verified | notes |",
                  "| --- | ---: | ---: | ---: | " + ("---: | ---: | " if floor_cols else "")
                  + ("---: | ---: | " if svc_cols else "") + "---: | ---: | ---: | --- | --- |"]
        for s in systems:
            rs = table[s]
            if not rs:
                continue
            base = BASE.get(s, "ours")
            ours = med([r["server_us"] + r["redis_us"] for r in table.get(base, [])])
            ours_server = med([r["server_us"] for r in table.get(base, [])])
            total = med([r["server_us"] + r["redis_us"] for r in rs])
            ratio = f"{total / ours:.2f}x" if ours and s != base else ("1" if s == base else "-")
            if svc_cols:
                svc = (f"| {spread(rs, 'broker_us', f1)} | {spread(rs, 'pg_us', f1)} "
                       if all("broker_us" in r for r in rs) else "| - | - ")
            floor = ""
            if floor_cols:
                floor = (f"| {spread(rs, 'floor_us', f1)} | {spread(rs, 'vs_floor', lambda x: f'{x:.2f}x')} "
                         if all("floor_us" in r for r in rs) else "| - | - ")
            lost = sum(r["lost"] for r in rs)
            dup = sum(r["duplicated"] for r in rs)
            reord = sum(r["reordered"] for r in rs)
            bad = [r for r in rs if not r["ok"]]
            verified = (f"{len(rs)}/{len(rs)} rounds ok, lost 0, dup 0, reordered 0" if not bad else
                        f"**{len(bad)}/{len(rs)} rounds FAILED**: lost {lost}, dup {dup}, reordered {reord}, "
                        f"unacked {sum(r['unacked'] for r in rs)}, errors {sum(r['errors'] for r in rs)}")
            notes = []
            nb = sum(r["loadgen_bound"] for r in rs)
            if nb:
                notes.append(f"load generator flagged itself the bottleneck in {nb}/{len(rs)} rounds")
            lines.append(f"| {LABEL[s]} | {spread(rs, 'server_us', f1)} | {spread(rs, 'redis_us', f1)} | {ratio} "
                         + floor + (svc if svc_cols else "") +
                         f"| {spread(rs, 'p50', ms)} | {spread(rs, 'p99', ms)} | {spread(rs, 'p999', ms)} "
                         f"| {verified} | {'; '.join(notes)} |")
            summary["systems"].setdefault(s, {})[str(rate)] = {
                "rounds": rs, "server_us_median": med([r["server_us"] for r in rs]),
                "redis_us_median": med([r["redis_us"] for r in rs]),
                "p99_ms_median": med([r["p99"] for r in rs]),
                "server_vs_ours": (med([r["server_us"] for r in rs]) / ours_server) if ours_server else None,
                "total_vs_ours": (total / ours) if ours else None, "baseline": base,
                "broker_us_median": med([r["broker_us"] for r in rs if "broker_us" in r]),
                "pg_us_median": med([r["pg_us"] for r in rs if "pg_us" in r]),
                "floor_us_median": med([r["floor_us"] for r in rs if "floor_us" in r]),
                "vs_floor_median": med([r["vs_floor"] for r in rs if "vs_floor" in r]),
            }
        lines.append("")
        bar_svg(out / f"cpu-{rate}.svg", f"CPU per delivery at {rate:,} msg/s offered (median of rounds)", "µs",
                [(LABEL[s], [(med([r["server_us"] for r in table[s]]), "#4878cf", "server (all its processes)"),
                             (med([r["redis_us"] for r in table[s]]), "#d65f5f", "Redis")])
                 for s in systems if table[s]])
        bar_svg(out / f"p99-{rate}.svg", f"Delivery p99 at {rate:,} msg/s offered (median of rounds)", "ms",
                [(LABEL[s], [(med([r["p99"] for r in table[s]]), "#6acc65", "delivery p99")])
                 for s in systems if table[s]])
        lines += [f"![CPU per delivery at {rate}](cpu-{rate}.svg)", f"![p99 at {rate}](p99-{rate}.svg)", ""]

    sweep_rows, idle_rows, pg_rows = [], [], []
    for s in systems:
        rr = [x for x in (load(p) for p in sorted((out / s).glob("rows-round-*.json"))) if x]
        if rr:
            ok = sum(x["rows"] == x["acked"] for x in rr)
            rows = ", ".join(f"{x['rows']:,}" for x in rr)
            acked = ", ".join(f"{x['acked']:,}" for x in rr)
            pg_rows.append(f"| {LABEL[s]} | {rows} | {acked} | {ok}/{len(rr)} |")
            summary["systems"].setdefault(s, {})["pg_rows"] = rr
        sw = load(out / s / "sweep" / "sweep.json")
        if sw:
            best = sw.get("best_rate")
            steps = sw.get("steps", [])
            last = steps[-1] if steps else {}
            why = ("; ".join(last.get("problems", [])) or f"p99 {last.get('p99_ms')} ms") if steps and not last.get("pass") else "every step passed"
            sweep_rows.append(f"| {LABEL[s]} | {f'{best:,.0f}' if best else 'none'} | "
                              f"{'yes' if sw.get('best_loadgen_bound') else 'no'} | {why} |")
            summary["systems"].setdefault(s, {})["sweep_best_rate"] = best
        idle = load(out / s / "idle" / "idle.json")
        if idle:
            idle_rows.append(f"| {LABEL[s]} | {idle['connections']:,} | {idle['bytes_per_connection']:,} |")
            summary["systems"].setdefault(s, {})["idle_bytes_per_connection"] = idle["bytes_per_connection"]
    if pg_rows:
        lines += ["### Rows in PostgreSQL after each round (both rates of the round)", "",
                  "| system | rows, per round | messages acked, per round | rounds where rows = acked |",
                  "| --- | --- | --- | --- |"] + pg_rows + [""]
    if sweep_rows:
        lines += ["### Highest rate at delivery p99 <= 10 ms, zero loss (one sweep each)", "",
                  "| system | msg/s | load generator the bottleneck there | first failing step |",
                  "| --- | ---: | --- | --- |"] + sweep_rows + [""]
    if idle_rows:
        lines += ["### Memory per idle connection (RSS of all the system's processes)", "",
                  "| system | idle connections | bytes per connection |", "| --- | ---: | ---: |"] + idle_rows + [""]

    # One line per system and figure (a round per line), so the file stays short and diffable.
    parts = []
    for s, figs in summary["systems"].items():
        inner = []
        for k, v in figs.items():
            if isinstance(v, dict) and "rounds" in v:
                rest = {x: y for x, y in v.items() if x != "rounds"}
                rounds = ",\n    ".join(json.dumps(r) for r in v["rounds"])
                inner.append(f'  {json.dumps(k)}: {json.dumps(rest)[:-1]}, "rounds": [\n    {rounds}]}}')
            else:
                inner.append(f"  {json.dumps(k)}: {json.dumps(v)}")
        parts.append(f" {json.dumps(s)}: {{\n" + ",\n".join(inner) + "}")
    (out / "summary.json").write_text(f'{{"rates": {json.dumps(summary["rates"])}, "systems": {{\n'
                                      + ",\n".join(parts) + "}}\n")
    readme = out / "README.md"
    text = readme.read_text() if readme.exists() else f"# results/peers\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1] if END in rest else ""
    readme.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join("results", "peers"))
