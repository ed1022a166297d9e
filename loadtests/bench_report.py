"""The benchmark's tables (Markdown, on standard output) and its self-contained HTML
report (OUT/report.html), from what loadtests/bench.sh left in OUT.

  bench_report.py OUT SECONDS_EACH PG_TPS PG_P50 PG_P99 REDIS_RPS REDIS_P50 REDIS_P99 HTTP_RPS
"""

import glob
import html
import json
import os
import sys


def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None


def fmt(x, digits=0):
    return f"{x:,.{digits}f}" if isinstance(x, (int, float)) else str(x)


def ratio(a, b):
    if not a or not b:
        return "n/a"
    return f"{a / b:.2f}×" if a < b else f"{a / b:.1f}×"


def completed_after(r, load_secs):
    done = r.get("completedAfterSeconds")
    if done is None:
        return "not within the deadline"
    return f"{max(done - load_secs, 0):.1f} s after the load" if load_secs else f"{done:.1f} s after the start"


def main(out, each, pg_tps, pg_p50, pg_p99, rd_rps, rd_p50, rd_p99, http_rps):
    each, pg_tps, rd_rps, http_rps = float(each), float(pg_tps), float(rd_rps), float(http_rps)
    rows = [  # system, orders/s (text), p50, p99, completed
        ("PostgreSQL hot row (pgbench, 32 clients)", fmt(pg_tps), pg_p50, pg_p99, ""),
        ("reservation script alone (redis-benchmark, pipeline 32)", fmt(rd_rps), rd_p50, rd_p99, ""),
        ("HTTP alone: GET /healthz of the same server, same generator", f"{fmt(http_rps)} requests/s", "", "", ""),
    ]
    steady = []
    for path in glob.glob(os.path.join(out, "steady-*.json")):
        r = load(path)
        if r:
            rate = int(path.rsplit("-", 1)[1].split(".")[0])
            steady.append((rate, r))
    steady.sort()
    for rate, r in steady:
        rows.append((f"flashsale steady, {rate:,} offered/s", fmt(r["acceptedPerSecond"]),
                     fmt(r["latencyMs"]["p50"], 1), fmt(r["latencyMs"]["p99"], 1),
                     completed_after(r, each) + ("" if not r["violations"] else " — VIOLATED")))
    burst = load(os.path.join(out, "burst.json"))
    if burst:
        rows.append(("flashsale burst, 100,000 buyers on 1,000 units",
                     f"{fmt(burst['requestsPerSecond'])} answers/s, {burst['statusCounts'].get('201', 0):,} sold",
                     fmt(burst["latencyMs"]["p50"], 1), fmt(burst["latencyMs"]["p99"], 1),
                     "" if not burst["violations"] else "VIOLATED"))
    cluster = load(os.path.join(out, "cost", "burst.json"))
    embedded = load(os.path.join(out, "embedded.json"))
    for name, r in (("cluster", cluster), ("embedded", embedded)):
        if r:
            rows.append((f"flashsale {name}, burst of 10,000 on 10,000 units", fmt(r["acceptedPerSecond"]),
                         fmt(r["latencyMs"]["p50"], 1), fmt(r["latencyMs"]["p99"], 1),
                         completed_after(r, 0) + ("" if not r["violations"] else " — VIOLATED")))

    md = ["| system | orders/s | p50 ms | p99 ms | every order completed |", "|---|---|---|---|---|"]
    md += [f"| {' | '.join(str(c) for c in row)} |" for row in rows]

    ok = [(rate, r) for rate, r in steady if not r["violations"]]
    under = [(rate, r) for rate, r in ok if r["latencyMs"]["p99"] < 25]
    top = max(ok, key=lambda x: x[1]["acceptedPerSecond"], default=None)
    ratios = []
    if under:
        rate, r = under[-1]
        ratios.append(f"highest steady rate with p99 < 25 ms: {rate:,}/s offered, {fmt(r['acceptedPerSecond'])} accepted/s")
    else:
        ratios.append("highest steady rate with p99 < 25 ms: none of the rates")
    if top:
        acc = top[1]["acceptedPerSecond"]
        ratios.append(f"most accepted ({top[0]:,}/s offered, {fmt(acc)}/s): flashsale / pgbench {ratio(acc, pg_tps)}, "
                      f"flashsale / reservation script {ratio(acc, rd_rps)}, flashsale / HTTP alone {ratio(acc, http_rps)}")
    if cluster and embedded:
        ratios.append(f"embedded / cluster, the same burst: {ratio(embedded['acceptedPerSecond'], cluster['acceptedPerSecond'])}")

    cost = {name: load(os.path.join(out, "cost", f"{name}-cpu.json")) for name in ("steady", "burst", "idle")}
    parts = []
    for c in cost.values():
        for p in (c or {}).get("cpuSeconds", {}):
            if p not in parts:
                parts.append(p)

    def per_order(c, part):
        if not c:
            return ""
        s = c["cpuSeconds"].get(part, 0.0) if part else c["totalCpuSeconds"]
        if c["orders"] > 0:
            return fmt(s / c["orders"] * 1e6)
        return fmt(s / max(c["wallSeconds"], 1e-9) * 100, 1)

    steady_run = load(os.path.join(out, "cost", "steady.json"))
    head = "| process | steady: µs per order | burst: µs per order | idle: % of a core |"
    cpu = [head, "|---|---|---|---|"]
    for p in parts:
        cpu.append(f"| {p} | {per_order(cost['steady'], p)} | {per_order(cost['burst'], p)} | {per_order(cost['idle'], p)} |")
    cpu.append(f"| **all but the load generator** | **{per_order(cost['steady'], None)}** | "
               f"**{per_order(cost['burst'], None)}** | **{per_order(cost['idle'], None)}** |")
    notes = []
    if steady_run:
        notes.append(f"steady run: {fmt(steady_run['acceptedPerSecond'])} accepted/s, p99 "
                     f"{fmt(steady_run['latencyMs']['p99'], 1)} ms, every order completed "
                     f"{completed_after(steady_run, 0)}")
    if cluster:
        notes.append(f"burst: {fmt(cluster['acceptedPerSecond'])} accepted/s, every order completed "
                     f"{completed_after(cluster, 0)}")

    text = "\n".join(md + [""] + ratios + ["", "CPU per order, by process (loadtests/cost.sh):", ""] + cpu + [""] + notes)
    print(text)
    write_html(out, md, ratios, cpu, notes)


def table_html(lines):
    def cell(c, tag):
        c = c.strip()
        if c.startswith("**") and c.endswith("**"):  # Markdown bold: the totals row
            return f"<{tag}><strong>{html.escape(c.strip('*'))}</strong></{tag}>"
        return f"<{tag}>{html.escape(c)}</{tag}>"

    def cells(line, tag):
        return "".join(cell(c, tag) for c in line.strip("|").split("|"))
    body = "".join(f"<tr>{cells(l, 'td')}</tr>" for l in lines[2:])
    return f"<table><thead><tr>{cells(lines[0], 'th')}</tr></thead><tbody>{body}</tbody></table>"


def write_html(out, md, ratios, cpu, notes):
    style = ("body{font:14px system-ui,sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}td:first-child,th:first-child{text-align:left}"
             "th{background:#f3f3f3}")
    doc = (f"<!doctype html><html><head><meta charset=utf-8><title>flashsale benchmark</title><style>{style}</style></head><body>"
           f"<h1>flashsale benchmark</h1><p>One machine, everything on it at once (services, server, load generator).</p>"
           f"<h2>Throughput and latency</h2>{table_html(md)}"
           f"<ul>{''.join(f'<li>{html.escape(r)}</li>' for r in ratios)}</ul>"
           f"<h2>CPU per order, by process</h2>{table_html(cpu)}"
           f"<ul>{''.join(f'<li>{html.escape(n)}</li>' for n in notes)}</ul>"
           f"<p>The 100,000-buyer burst's own report: <a href=burst.html>burst.html</a>.</p></body></html>")
    open(os.path.join(out, "report.html"), "w").write(doc)


if __name__ == "__main__":
    if len(sys.argv) != 10:
        sys.exit(__doc__)
    main(*sys.argv[1:])
