"""Runs a real Prometheus (Debian's package) scraping a real server (the debug binary,
cluster mode, against this machine's services with databases, queues and keys of its
own) through a burst of the load tester, then evaluates every alert's expression
(deploy/prometheus/alerts.yml) and every dashboard panel's (deploy/grafana/flashsale.json)
through Prometheus' HTTP API: each must parse, and every flashsale_ metric it names
must exist in what was scraped, so that a renamed metric fails here and not on the day
of a sale."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import yaml

import localenv

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
ADMIN_TOKEN = "observability-admin-token-0123456789"
JWT = "observability-jwt-secret-0123456789-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def expressions() -> list:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    out = [(f"alert {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((ROOT / "deploy/grafana/flashsale.json").read_text())
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            out.append((f"panel {panel['title']!r}", t["expr"]))
    return out


def server(env: dict) -> tuple:
    proc, public, admin = localenv.start([str(TARGET / "debug/flashsale"), "serve", "--config",
                                          "config/cluster.toml"], env, cwd=ROOT)
    if not (public and admin):
        proc.kill()
        sys.exit("the server did not start")
    return proc, public, admin


def main() -> int:
    env = localenv.service_env("obs", ADMIN_TOKEN, JWT)
    proc, public, admin = server(env)
    prom_port = free_port()
    prom = None
    failures = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = pathlib.Path(tmp) / "prometheus.yml"
            target = urllib.parse.urlparse(admin).netloc
            config.write_text(yaml.safe_dump({
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{"job_name": "flashsale", "static_configs": [{"targets": [target]}]}],
            }))
            prom = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
                                     f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            api = f"http://127.0.0.1:{prom_port}/api/v1"
            deadline = time.time() + 30
            while time.time() < deadline:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/-/ready", timeout=2)
                    break
                except OSError:
                    time.sleep(0.3)

            load = subprocess.run([str(TARGET / "release/flashsale-load"), "--quiet", "--target", public,
                                   "--admin-url", admin, "--admin-token", ADMIN_TOKEN, "--jwt-secret", JWT,
                                   "--deadline-secs", "60", "burst", "--buyers", "1000", "--stock", "100",
                                   "--window-ms", "500"], capture_output=True, text=True)
            if load.returncode != 0:
                failures.append(f"the burst failed: {load.stdout[-800:]}{load.stderr[-800:]}")
            else:
                print("a burst of 1,000 buyers on 100 units: invariants ok")

            exprs = expressions()
            wanted = sorted({m for _, e in exprs for m in re.findall(r"\bflashsale_[a-z0-9_]+", e)})
            # Scraped names; the events' metrics follow the burst by a few seconds.
            deadline = time.time() + 30
            while True:
                names = set(get_json(f"{api}/label/__name__/values")["data"])
                missing = [m for m in wanted if m not in names]
                if not missing or time.time() > deadline:
                    break
                time.sleep(1)
            for m in missing:
                failures.append(f"metric {m} is named by an expression but was never scraped")
            for where, expr in exprs:
                q = urllib.parse.urlencode({"query": expr})
                try:
                    r = get_json(f"{api}/query?{q}")
                    if r.get("status") != "success":
                        failures.append(f"{where}: {r}")
                except urllib.error.HTTPError as e:
                    failures.append(f"{where}: {expr!r} does not parse: {e.read().decode()[:300]}")
            print(f"{len(exprs)} expressions ({sum(1 for w, _ in exprs if w.startswith('alert'))} alerts, "
                  f"{sum(1 for w, _ in exprs if w.startswith('panel'))} panel queries) evaluated; "
                  f"{len(wanted)} metrics named, {len(wanted) - len(missing)} scraped")
    finally:
        if prom:
            prom.send_signal(signal.SIGTERM)
            prom.wait(timeout=30)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=40)
    for f in failures:
        print("FAIL", f)
    print("observability check:", "failed" if failures else "ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
