#!/usr/bin/env python3
"""The summary steps of scripts/results.sh (standard library only).

  results-summary.py idle-report DIR   DIR/report.md from DIR/result.json (idle connections)
  results-summary.py persister DIR     DIR/result.json + report.md from DIR/run-*.txt (bench.sh output)
  results-summary.py readme OUT        OUT/run-set.json, and the block between the markers of
                                       OUT/README.md (appended when the markers are missing)

Headline rules (results/README.md, "How to read these numbers"):
  * highest delivered messages/s at delivery p99 <= bound: the standalone fine sweeps
    (standalone-sweep/run-N); each gives its highest passing rate; the headline is the sweep with
    the median one, its deliveries/s (receptions, = sent msg/s x members) and its p99;
  * p99 at half that rate: the median delivery p99 of standalone-half-rate/run-N;
  * server CPU per delivered message: at the headline step (and the half-rate runs' median);
  * memory per idle connection: idle-connections/result.json;
  * persister rows/s: the median of persister/run-N (process start to last row).
"""

import glob
import json
import os
import re
import statistics
import subprocess
import sys
import time

from results_rows import load, ms, num, peers_rows, presence_rows  # noqa: E402 (scripts/ is on the path)

BEGIN = "<!-- run-set:begin: scripts/results.sh writes this block; edits inside it are lost -->"
END = "<!-- run-set:end -->"


def median_item(items, key):
    """The item with the median key (the lower middle one for an even count)."""
    items = sorted(items, key=key)
    return items[(len(items) - 1) // 2] if items else None


def run_commit(r):
    c = (r or {}).get("commit") or {}
    h = c.get("hash")
    if not h:
        return None
    return h[:7] + ("-dirty" if c.get("dirty") else "")


def run_date(r):
    t = (r or {}).get("started_at_unix")
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else None


# ------------------------------------------------------------------------------------------
def idle_report(d):
    r = load(os.path.join(d, "result.json"))
    mib = 1024 * 1024
    lines = [
        "# Memory per idle connection",
        "",
        f"{r['what']}, {r['date']}.",
        "",
        "```",
        "scripts/results.sh idle",
        "```",
        "",
        "A fresh server's resident set size (VmRSS of /proc/PID/status) is read once before"
        " the load generator connects, then with every connection open (after 3 s and 6 s"
        " of quiet), and after they closed. Two of the connections are members of one room"
        " with 10 msg/s between them; all others only completed the WebSocket upgrade and"
        " stay silent (no room, no traffic).",
        "",
        "| | value |",
        "| --- | ---: |",
        f"| connections attempted (target) | {num(r['attempted_connections'])} ({num(r['target_connections'])}) |",
        f"| connections open at the measurement | {num(r['connections_open'])} |",
        f"| seconds to open them | {r['seconds_to_connect']} |",
        f"| RSS before | {r['rss_bytes_before'] / mib:.1f} MiB |",
        f"| RSS with them open (first, second sample) | {r['rss_bytes_open_first_sample'] / mib:.1f}, {r['rss_bytes_open'] / mib:.1f} MiB |",
        f"| RSS after they closed | {r['rss_bytes_after_close'] / mib:.1f} MiB |",
        f"| **RSS per idle connection** | **{num(r['bytes_per_idle_connection'])} bytes** |",
        f"| kernel TCP buffer memory per connection, both ends (`mem` of /proc/net/sockstat: queued data, not in RSS; socket structures not included) | {num(r['kernel_tcp_bytes_per_connection_both_ends'])} bytes |",
        f"| source addresses (ephemeral ports per address: {num(r['ephemeral_ports'])}) | {r['source_ips']} |",
        f"| open-files limit per process | {num(r['open_files_limit'])} |",
        f"| load generator exit status | {r['loadgen_exit_status']} |",
        "",
    ]
    if r.get("limit"):
        lines += [f"**Why not {num(r['target_connections'])}:** {r['limit']}.", ""]
    lines += [
        "The load generator's own result (it also verified the two active members' traffic):"
        " [loadgen-run/report.md](loadgen-run/report.md); its output: [loadgen.out](loadgen.out).",
        "",
    ]
    with open(os.path.join(d, "report.md"), "w") as f:
        f.write("\n".join(lines))


# ------------------------------------------------------------------------------------------
PERSISTER_RE = re.compile(
    r"persister: (\d+) rows in ([\d.]+) s from process start = (\d+) rows/s; (\d+) rows/s from the first committed row"
)
COPY_RE = re.compile(r"psql \\copy \(stream order\): ([\d.]+) s = (\d+) rows/s")
COPYS_RE = re.compile(r"psql \\copy \(sorted by room, seq\): ([\d.]+) s = (\d+) rows/s")
INSERT_RE = re.compile(r"multi-row INSERT .*: ([\d.]+) s = (\d+) rows/s")


def persister(d):
    runs = []
    for path in sorted(glob.glob(os.path.join(d, "run-*.txt")), key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[0])):
        text = open(path, errors="replace").read()
        m = PERSISTER_RE.search(text)
        run = {"file": os.path.basename(path), "ok": bool(m)}
        if m:
            run.update(rows=int(m[1]), seconds=float(m[2]), rows_per_s=int(m[3]), steady_rows_per_s=int(m[4]))
        for key, rx in (("copy", COPY_RE), ("copy_sorted", COPYS_RE), ("insert", INSERT_RE)):
            m = rx.search(text)
            if m:
                run[key + "_rows_per_s"] = int(m[2])
        runs.append(run)
    ok = [r for r in runs if r["ok"]]
    med = lambda k: statistics.median([r[k] for r in ok if k in r]) if any(k in r for r in ok) else None
    result = {
        "what": "persister/bench.sh: chat-persister (tansu memory broker, 8 partitions) into a fresh PostgreSQL database, next to psql \\copy and multi-row INSERT of the same rows",
        "date": os.environ.get("RESULTS_STARTED") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": os.environ.get("RESULTS_COMMIT"),
        "runs": runs,
        "median_rows_per_s": med("rows_per_s"),
        "median_steady_rows_per_s": med("steady_rows_per_s"),
        "median_copy_rows_per_s": med("copy_rows_per_s"),
        "median_copy_sorted_rows_per_s": med("copy_sorted_rows_per_s"),
        "median_insert_rows_per_s": med("insert_rows_per_s"),
    }
    with open(os.path.join(d, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [
        "# Persister throughput",
        "",
        result["what"] + f"; {len(ok)} of {len(runs)} runs parsed. Each run's full output: run-N.txt.",
        "",
        "| run | rows | process start to last row | first committed row to last | raw `\\copy`, stream order | raw `\\copy`, sorted | multi-row INSERT |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        lines.append(
            f"| [{r['file']}]({r['file']}) | {num(r.get('rows'))} | {num(r.get('rows_per_s'))} | {num(r.get('steady_rows_per_s'))}"
            f" | {num(r.get('copy_rows_per_s'))} | {num(r.get('copy_sorted_rows_per_s'))} | {num(r.get('insert_rows_per_s'))} |"
        )
    lines.append(
        f"| **median** | | **{num(result['median_rows_per_s'])}** | {num(result['median_steady_rows_per_s'])}"
        f" | {num(result['median_copy_rows_per_s'])} | {num(result['median_copy_sorted_rows_per_s'])} | {num(result['median_insert_rows_per_s'])} |"
    )
    lines += ["", "rows/s; see persister/README.md (\"Measured\") for what each path is.", ""]
    with open(os.path.join(d, "report.md"), "w") as f:
        f.write("\n".join(lines))


# ------------------------------------------------------------------------------------------
def sweep_steps(sweep_dir):
    """sweep.json plus, per step, its last attempt's result.json (for CPU pressure)."""
    s = load(os.path.join(sweep_dir, "sweep.json"))
    if s is None:
        return None, []
    results = {}
    for st in s["steps"]:
        rate = st["rate"]
        name = f"rate-{int(rate)}" if float(rate).is_integer() else f"rate-{rate}"
        attempts = len(st.get("attempts_p99_ms") or [])
        if attempts > 1:
            name += f"-try-{attempts}"
        results[rate] = load(os.path.join(sweep_dir, name, "result.json"))
    return s, results


def retried(s):
    """'; 2 steps retried (p99 10.6, 16.8 ms at the first try)', or '' when none was."""
    firsts = [st["attempts_p99_ms"][0] for st in s["steps"] if len(st.get("attempts_p99_ms") or []) > 1]
    if not firsts:
        return ""
    return (f"; {len(firsts)} step{'s' if len(firsts) != 1 else ''} retried "
            f"(p99 {', '.join(f'{x:.1f}' for x in firsts)} ms at the first try)")


def step_at(s, rate):
    for st in s["steps"]:
        if st["rate"] == rate:
            return st
    return None


def pressure(results):
    vals = [r["loadgen"]["cpu_pressure"] for r in results if r and r.get("loadgen")]
    return max(vals) if vals else None


def pct(v):
    return "n/a" if v is None else f"{v * 100:.0f}%"


def machine_info(results):
    for r in results:
        if r and r.get("machine"):
            m = r["machine"]
            return {
                "cpu_model": m.get("cpu_model"),
                "cores": m.get("cores"),
                "memory_gib": round(m.get("memory_bytes", 0) / 2**30, 1),
                "kernel": m.get("kernel"),
                "os": m.get("os"),
                "source": "result.json of the runs",
            }
    info = {"source": "this machine at summary time"}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    info["cores"] = os.cpu_count()
    with open("/proc/meminfo") as f:
        kb = int(f.readline().split()[1])
    info["memory_gib"] = round(kb / 2**20, 1)
    info["kernel"] = os.uname().release
    return info


def readme(out):
    old = load(os.path.join(out, "run-set.json"))
    # The invocation that ran the parts; `readme` alone keeps the previous one's.
    env = load(os.path.join(out, ".run-set.env.json")) or (old or {}).get("invocation") or {}
    rel = lambda p: os.path.relpath(p, out)
    headline = {}
    runs = []  # (link, what, result) rows
    all_results = []
    commits, dates = set(), []

    def note(r):
        if r:
            all_results.append(r)
            c = run_commit(r)
            if c:
                commits.add(c)
            if r.get("started_at_unix"):
                dates.append(r["started_at_unix"])

    # --- standalone sweeps
    sd = os.path.join(out, "standalone-sweep")
    sweeps = []
    for d in sorted(glob.glob(os.path.join(sd, "run-*")), key=lambda p: int(p.rsplit("-", 1)[1])):
        s, res = sweep_steps(d)
        if s is None:
            continue
        for r in res.values():
            note(r)
        best = s.get("best_rate")
        st = step_at(s, best) if best else None
        sweeps.append({"dir": d, "sweep": s, "best": best or 0, "step": st, "results": res})
        runs.append((
            f"[standalone-sweep/{os.path.basename(d)}]({rel(d)}/sweep.md)",
            f"sweep, {len(s['steps'])} steps from {num(s['steps'][0]['rate'])} msg/s" if s["steps"] else "sweep",
            (f"highest passing **{num(best)} msg/s = {num(st['delivered_per_s'])} deliveries/s**, p99 {ms(st['p99_ms'])}"
             + (" (loadgen-bound)" if s.get("best_loadgen_bound") else "") if st else "no step passed")
            + retried(s)
            + f"; CPU pressure up to {pct(pressure(res.values()))}",
        ))
    coarse = os.path.join(sd, "coarse")
    s, res = sweep_steps(coarse)
    if s:
        for r in res.values():
            note(r)
        runs.insert(0, (
            f"[standalone-sweep/coarse]({rel(coarse)}/sweep.md)",
            "coarse sweep (x1.5 steps, short) that places the fine sweeps",
            f"highest passing {num(s.get('best_rate'))} msg/s",
        ))
    if sweeps:
        m = median_item(sweeps, lambda x: x["best"])
        st = m["step"]
        headline["standalone"] = {
            "sweeps": len(sweeps),
            "best_rates": [x["best"] for x in sweeps],
            "median_best_rate": m["best"],
            "median_sweep": rel(m["dir"]),
            "delivered_per_s": st["delivered_per_s"] if st else None,
            "p99_ms": st["p99_ms"] if st else None,
            "server_cpu_us_per_delivered": st["server_cpu_us_per_delivered"] if st else None,
            "loadgen_bound": m["sweep"].get("best_loadgen_bound"),
            "loadgen_cores": st["loadgen_cores"] if st else None,
            "p99_bound_ms": m["sweep"].get("p99_bound_ms"),
            "members": (m["results"].get(m["best"]) or {}).get("scenario", {}).get("members"),
            "spread": (max(x["best"] for x in sweeps) / min(x["best"] for x in sweeps) - 1) if min(x["best"] for x in sweeps) > 0 else None,
        }

    # --- half rate
    hd = os.path.join(out, "standalone-half-rate")
    halves = []
    for d in sorted(glob.glob(os.path.join(hd, "run-*")), key=lambda p: int(p.rsplit("-", 1)[1])):
        r = load(os.path.join(d, "result.json"))
        if not r:
            continue
        note(r)
        halves.append({"dir": d, "r": r, "p99": r["latency"]["delivery"]["p99_ms"]})
        runs.append((
            f"[standalone-half-rate/{os.path.basename(d)}]({rel(d)}/report.md)",
            f"fixed {num(r['scenario']['rate'])} msg/s, {num(r['scenario']['duration'])} s",
            f"{num(r['throughput']['delivered_per_s'])} deliveries/s, p50 {ms(r['latency']['delivery']['p50_ms'])}, p99 {ms(r['latency']['delivery']['p99_ms'])}, "
            f"{'ok' if r['verdict']['ok'] else 'FAILED'}; {num(r.get('server_cpu_us_per_delivered'), 2)} µs CPU/delivery; CPU pressure {pct(r['loadgen'].get('cpu_pressure'))}",
        ))
    if halves:
        m = median_item(halves, lambda x: x["p99"])
        r = m["r"]
        headline["half_rate"] = {
            "rate": r["scenario"]["rate"],
            "delivered_per_s": r["throughput"]["delivered_per_s"],
            "p99_ms_runs": [x["p99"] for x in halves],
            "p99_ms": m["p99"],
            "p50_ms": r["latency"]["delivery"]["p50_ms"],
            "server_cpu_us_per_delivered": statistics.median(
                [x["r"]["server_cpu_us_per_delivered"] for x in halves if x["r"].get("server_cpu_us_per_delivered")] or [0]) or None,
            "median_run": rel(m["dir"]),
        }

    # --- idle connections
    idir = os.path.join(out, "idle-connections")
    ir = load(os.path.join(idir, "result.json"))
    if ir:
        lr = load(os.path.join(idir, "loadgen-run", "result.json"))
        note(lr)
        headline["idle"] = {
            "bytes_per_idle_connection": ir.get("bytes_per_idle_connection"),
            "connections": ir.get("connections_open"),
            "target": ir.get("target_connections"),
            "limit": ir.get("limit"),
            "kernel_tcp_bytes_per_connection_both_ends": ir.get("kernel_tcp_bytes_per_connection_both_ends"),
        }
        runs.append((
            f"[idle-connections]({rel(idir)}/report.md)",
            f"RSS of a fresh server before and with {num(ir.get('connections_open'))} idle WebSockets",
            f"**{num(ir.get('bytes_per_idle_connection'))} bytes per idle connection**"
            + (f" (target {num(ir['target_connections'])}: {ir['limit']})" if ir.get("limit") else ""),
        ))

    # --- cluster
    cf = os.path.join(out, "cluster-2node-fixed")
    r = load(os.path.join(cf, "result.json"))
    if r:
        note(r)
        lat = r["latency"]
        persist = lat.get("persist") or {}
        headline["cluster_fixed"] = {
            "rate": r["scenario"]["rate"],
            "delivered_per_s": r["throughput"]["delivered_per_s"],
            "delivery_p50_ms": lat["delivery"]["p50_ms"],
            "delivery_p99_ms": lat["delivery"]["p99_ms"],
            "ack_p99_ms": lat["ack"]["p99_ms"],
            "persist_p50_ms": persist.get("p50_ms"),
            "persist_p99_ms": persist.get("p99_ms"),
            "ok": r["verdict"]["ok"],
        }
        runs.append((
            f"[cluster-2node-fixed]({rel(cf)}/report.md)",
            f"2-node cluster, loadgen/scenarios/cluster.toml (10% DMs, persistence sampled), {num(r['scenario']['rate'])} msg/s, {num(r['scenario']['duration'])} s",
            f"{num(r['counters']['delivered'])} deliveries verified, {'ok' if r['verdict']['ok'] else 'FAILED: ' + ', '.join(r['verdict']['problems'])}; delivery p50 {ms(lat['delivery']['p50_ms'])} p99 {ms(lat['delivery']['p99_ms'])}; "
            f"ack p99 {ms(lat['ack']['p99_ms'])}; persisted p50 {ms(persist.get('p50_ms'))} p99 {ms(persist.get('p99_ms'))}; CPU pressure {pct(r['loadgen'].get('cpu_pressure'))}",
        ))
    cs = os.path.join(out, "cluster-2node-sweep")
    s, res = sweep_steps(cs)
    if s:
        for x in res.values():
            note(x)
        best = s.get("best_rate")
        st = step_at(s, best) if best else None
        headline["cluster_sweep"] = {
            "best_rate": best,
            "delivered_per_s": st["delivered_per_s"] if st else None,
            "p99_ms": st["p99_ms"] if st else None,
            "server_cpu_us_per_delivered": st["server_cpu_us_per_delivered"] if st else None,
            "loadgen_bound": s.get("best_loadgen_bound"),
        }
        runs.append((
            f"[cluster-2node-sweep]({rel(cs)}/sweep.md)",
            "2-node cluster sweep (10% DMs, no persistence sampling), x1.25 steps",
            (f"highest passing **{num(best)} msg/s = {num(st['delivered_per_s'])} deliveries/s**, p99 {ms(st['p99_ms'])}" if st else "no step passed")
            + f"; CPU pressure up to {pct(pressure(res.values()))}",
        ))

    # --- persister
    pr = load(os.path.join(out, "persister", "result.json"))
    if pr:
        headline["persister"] = {
            "rows_per_s": pr.get("median_rows_per_s"),
            "steady_rows_per_s": pr.get("median_steady_rows_per_s"),
            "copy_rows_per_s": pr.get("median_copy_rows_per_s"),
            "copy_sorted_rows_per_s": pr.get("median_copy_sorted_rows_per_s"),
            "runs": [x.get("rows_per_s") for x in pr["runs"]],
            "rows": (pr["runs"][0].get("rows") if pr["runs"] else None),
        }
        runs.append((
            f"[persister]({rel(os.path.join(out, 'persister'))}/report.md)",
            f"persister/bench.sh, {len(pr['runs'])} run(s)",
            f"median **{num(pr.get('median_rows_per_s'))} rows/s** (raw `\\copy` {num(pr.get('median_copy_rows_per_s'))})",
        ))
        if pr.get("commit"):
            commits.add(pr["commit"])

    machine = machine_info(all_results)
    if dates:
        first, last = (time.strftime("%Y-%m-%d %H:%M", time.gmtime(t)) for t in (min(dates), max(dates)))
        date = f"{first} to {last[11:] if first[:10] == last[:10] else last} UTC"
    else:
        date = (env.get("started") or "")[:10]
    max_pressure = pressure(all_results)
    run_set = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "date": date,
        "commits": sorted(commits),
        "machine": machine,
        "max_cpu_pressure": max_pressure,
        "invocation": env,
        "headline": headline,
    }
    with open(os.path.join(out, "run-set.json"), "w") as f:
        json.dump(run_set, f, indent=2)

    # Reproducibility against the previous run set in the same place.
    try:
        a = old["headline"]["standalone"]["delivered_per_s"]
        b = headline["standalone"]["delivered_per_s"]
        print(f"results: headline {num(b)} deliveries/s; previous run set {num(a)} ({(b / a - 1) * 100:+.1f}%)")
    except (TypeError, KeyError, ZeroDivisionError):
        pass

    # --- the block
    h = headline
    L = []
    L.append(f"Run set of {date}, commit {', '.join(sorted(commits)) or 'n/a'}; machine: {machine.get('cpu_model', '?')}, "
             f"{machine.get('cores', '?')} cores, {machine.get('memory_gib', '?')} GiB RAM, kernel {machine.get('kernel', '?')}"
             + (f", {machine['os']}" if machine.get("os") else "")
             + "; servers, Redis, PostgreSQL, the broker and the load generator all on those cores."
             + (f" Load average when the last `scripts/results.sh` started: {env['loadavg_before']}." if env.get("loadavg_before") else "")
             + (f" CPU pressure during the load runs: up to {pct(max_pressure)}." if max_pressure is not None else "")
             + (" **Quick mode: short runs, not for publication.**" if env.get("quick") else ""))
    L.append("")
    L.append("| headline | value | how |")
    L.append("| --- | ---: | --- |")
    st = h.get("standalone")
    if st:
        bound = st.get("p99_bound_ms") or 10
        L.append(
            f"| highest delivered messages/s at delivery p99 ≤ {bound:g} ms (standalone, all cores) | **{num(st['delivered_per_s'])} deliveries/s** "
            f"({num(st['median_best_rate'])} msg/s sent × {st.get('members') or '?'} members), p99 {ms(st['p99_ms'])} | median of {st['sweeps']} sweep{'s' if st['sweeps'] != 1 else ''} "
            f"(highest passing rates {', '.join(num(x) for x in st['best_rates'])} msg/s), [{st['median_sweep']}]({st['median_sweep']}/sweep.md)"
            + ("; **the load generator was the bottleneck at that rate or the next step**" if st.get("loadgen_bound") else "") + " |")
    hr = h.get("half_rate")
    if hr:
        L.append(
            f"| delivery p99 at half that rate ({num(hr['rate'])} msg/s = {num(hr['delivered_per_s'])} deliveries/s) | **{ms(hr['p99_ms'])}** (p50 {ms(hr['p50_ms'])}) | "
            f"median of {len(hr['p99_ms_runs'])} run{'s' if len(hr['p99_ms_runs']) != 1 else ''} ({', '.join(ms(x) for x in hr['p99_ms_runs'])}), [{hr['median_run']}]({hr['median_run']}/report.md) |")
    if st or hr:
        parts = []
        if st and st.get("server_cpu_us_per_delivered"):
            parts.append(f"**{num(st['server_cpu_us_per_delivered'], 2)} µs** at the headline rate")
        if hr and hr.get("server_cpu_us_per_delivered"):
            parts.append(f"{num(hr['server_cpu_us_per_delivered'], 2)} µs at half of it")
        L.append(f"| server CPU per delivered message | {', '.join(parts) or 'n/a'} | the server's `process_cpu_seconds_total` over the run ÷ deliveries (warm-up included in both) |")
    idl = h.get("idle")
    if idl:
        L.append(
            f"| memory per idle connection | **{num(idl['bytes_per_idle_connection'])} bytes** RSS | {num(idl['connections'])} idle WebSockets"
            + (f" (not {num(idl['target'])}: {idl['limit']})" if idl.get("limit") else "")
            + "; [idle-connections](idle-connections/report.md) |")
    p = h.get("persister")
    if p:
        L.append(
            f"| persister rows/s | **{num(p['rows_per_s'])} rows/s** | {num(p.get('rows'))} rows, process start to last row, median of {len(p['runs'])} "
            f"(raw `\\copy` of the same rows: {num(p.get('copy_rows_per_s'))}), [persister](persister/report.md) |")
    cs = h.get("cluster_sweep")
    if cs:
        value = (f"{num(cs['delivered_per_s'])} deliveries/s ({num(cs['best_rate'])} msg/s, 10% DMs), p99 {ms(cs['p99_ms'])}"
                 if cs.get("best_rate") else "none: the first step failed")
        L.append(
            f"| 2-node cluster: highest delivered messages/s at delivery p99 ≤ 10 ms | {value} | one sweep, [cluster-2node-sweep](cluster-2node-sweep/sweep.md)"
            + ("; load generator the bottleneck at that rate or the next step" if cs.get("loadgen_bound") else "") + " |")
    cf = h.get("cluster_fixed")
    if cf:
        L.append(
            f"| 2-node cluster at {num(cf['rate'])} msg/s: delivery / ack / persisted p99 | {ms(cf['delivery_p99_ms'])} / {ms(cf['ack_p99_ms'])} / {ms(cf['persist_p99_ms'])} | "
            f"ack = durable in Kafka (acks=all); [cluster-2node-fixed](cluster-2node-fixed/report.md) |")
    L.extend(peers_rows(out))
    L.extend(presence_rows(out))
    L.append("")
    L.append("Every run of this set:")
    L.append("")
    L.append("| run | what | result |")
    L.append("| --- | --- | --- |")
    for link, what, res in runs:
        L.append(f"| {link} | {what} | {res} |")
    block = "\n".join(L)

    path = os.path.join(out, "README.md")
    text = open(path).read() if os.path.exists(path) else "# Run set\n\n"
    if BEGIN in text and END in text:
        pre, rest = text.split(BEGIN, 1)
        _, post = rest.split(END, 1)
        text = f"{pre}{BEGIN}\n{block}\n{END}{post}"
    else:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{block}\n{END}\n"
    with open(path, "w") as f:
        f.write(text)


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cmd, d = sys.argv[1], sys.argv[2]
    {"idle-report": idle_report, "persister": persister, "readme": readme}[cmd](d)


if __name__ == "__main__":
    main()
