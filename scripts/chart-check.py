"""Validates the Helm chart offline: `helm lint --strict` (Helm's own Go SDK through
helm-python-sdk, no helm binary), then renders it with the default values and with
each variant in helm/flashsale/ci/*-values.yaml and validates every rendered object
against the Kubernetes 1.30 schemas in strict mode (kubernetes-validate). Objects of
custom resources (KEDA, the Prometheus Operator) are validated against the schemas
of their CustomResourceDefinitions kept in deploy/crds/, strictly (an unknown field
fails, as `kubectl apply --validate=strict` would), and checked for the fields their
controllers need. Also checks that the PrometheusRule carries exactly the rules of
deploy/prometheus/alerts.yml and the dashboard ConfigMap deploy/grafana/flashsale.json,
that values outside values.schema.json are refused, and
that the rendered config file, with the environment the Deployments set from the
Secret, starts the real binary in both roles (against the services of this machine,
with databases, queues and keys of its own) and drains on SIGTERM with exit 0.
Prints what each variant renders."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import helm_python
import jsonschema
import kubernetes_validate
import yaml

import localenv

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "flashsale"
KUBE = "1.30.0"
CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"): ["spec.scaleTargetRef.name", "spec.triggers"],
    ("keda.sh/v1alpha1", "TriggerAuthentication"): ["spec.secretTargetRef"],
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ["spec.selector", "spec.endpoints"],
    ("monitoring.coreos.com/v1", "PrometheusRule"): ["spec.groups"],
}


def strict(schema):
    """A CRD's openAPIV3Schema as JSON Schema that refuses unknown fields wherever the
    CRD lists the fields and does not ask to keep unknown ones."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if schema.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def crd_schemas():
    """(apiVersion, kind) -> a validator, from every CRD in deploy/crds/."""
    validators = {}
    for path in sorted((ROOT / "deploy" / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            # metadata is the API server's to check (kubernetes-validate does it for
            # built-in kinds); the CRD's schema only says it is an object.
            schema.setdefault("properties", {})["metadata"] = {"type": "object"}
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def field(obj, path):
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def serve_rendered(config_toml: str, binary: str) -> list:
    """Starts the binary on the chart's config file in each role; returns failures."""
    failures = []
    env = localenv.service_env("chart", "chart-check-admin-token-0123456789",
                               "chart-check-jwt-secret-0123456789-0123456789")
    # The migration Job: no config file, the environment alone (FLASHSALE__MODE and
    # the brokers from values, the rest from the Secret).
    job_env = {k: v for k, v in env.items() if not k.startswith("FLASHSALE__") or k in {
        "FLASHSALE__CATALOG__URL", "FLASHSALE__SHARDS__URLS", "FLASHSALE__INVENTORY__URLS",
        "FLASHSALE__QUEUE__URL", "FLASHSALE__ADMIN__TOKEN", "FLASHSALE__AUTH__JWT_SECRET",
        "FLASHSALE__EVENTS__BROKERS"}}
    job_env["FLASHSALE__MODE"] = "cluster"
    migrate = subprocess.run([binary, "migrate"], env=job_env, capture_output=True, text=True, timeout=120)
    if migrate.returncode != 0:
        failures.append(f"the migration Job's command failed: {migrate.stderr[-1500:]}")
    else:
        print("the migration Job's command (environment only): exit 0")
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "config.toml"
        path.write_text(config_toml)
        for role in ("api", "worker"):
            proc, _, admin = localenv.start([binary, "serve", "--config", str(path), "--role", role], env)
            deadline = time.time() + 60
            ready = False
            while admin and not ready and time.time() < deadline:
                try:
                    ready = urllib.request.urlopen(admin + "/readyz", timeout=2).status == 200
                except OSError:
                    time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = "none (killed after 40 s)"
            if not ready or code != 0:
                failures.append(f"the rendered config, role {role}: ready {ready}, exit code {code}: "
                                + localenv.log(proc)[-1500:])
            else:
                print(f"rendered config.toml, role {role}: ready on {admin}, SIGTERM exit 0")
    return failures


def main() -> int:
    failures = []
    report = helm_python.lint(str(CHART), strict=True, kube_version="v" + KUBE)
    for m in report["messages"]:
        if m["severity"] >= 2:
            failures.append(f"lint: {m['path']}: {m['error']}")
    failures += [f"lint: {e}" for e in report.get("errors") or []]
    print(f"lint --strict: {len(report['messages'])} message(s)")

    variants = [("defaults", {})] + [
        (p.name, yaml.safe_load(p.read_text())) for p in sorted((CHART / "ci").glob("*-values.yaml"))
    ]
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "flashsale.json").read_text())
    chart = helm_python.Chart.load(str(CHART))
    crds = crd_schemas()
    print(f"CRD schemas: {', '.join(sorted(k for _, k in crds))} (deploy/crds)")
    for name, values in variants:
        for install in (True, False):
            rendered = chart.render(values, name="shop", namespace="sales", is_install=install, is_upgrade=not install)
            kinds = []
            for path, text in sorted(rendered.items()):
                if path.endswith("NOTES.txt"):
                    continue
                for obj in yaml.safe_load_all(text):
                    if not obj:
                        continue
                    kind = (obj.get("apiVersion"), obj.get("kind"))
                    kinds.append(f"{obj['kind']}/{obj['metadata']['name']}")
                    if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].endswith("-dashboard"):
                        if json.loads(obj["data"]["flashsale.json"]) != dashboard:
                            failures.append(f"{name}: the dashboard ConfigMap differs from deploy/grafana/flashsale.json")
                    if kind in CUSTOM:
                        if kind not in crds:
                            failures.append(f"{name}: {kinds[-1]}: no CRD schema in deploy/crds")
                        else:
                            for e in crds[kind].iter_errors(obj):
                                failures.append(f"{name}: {kinds[-1]}: {e.message} at {list(e.path)}")
                        for need in CUSTOM[kind]:
                            if not field(obj, need):
                                failures.append(f"{name}: {kinds[-1]} lacks {need}")
                        if kind[1] == "PrometheusRule" and obj["spec"] != alerts:
                            failures.append(f"{name}: the PrometheusRule differs from deploy/prometheus/alerts.yml")
                        continue
                    try:
                        kubernetes_validate.validate(obj, KUBE, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        failures.append(f"{name}: {kinds[-1]}: {e.message} at {list(e.path)}")
                    except kubernetes_validate.SchemaNotFoundError as e:
                        failures.append(f"{name}: {kinds[-1]}: no schema ({e})")
            if install:
                print(f"{name}: {len(kinds)} objects: {', '.join(sorted(kinds))}")
    # Values outside the schema are refused.
    for bad in ({"image": {"pullPolicy": "Sometimes"}}, {"config": {"poolSize": "three"}},
                {"keda": {"saleWindows": [{"name": "x"}]}}, {"unknownKnob": 1}):
        try:
            chart.render(bad, name="shop", namespace="sales")
            failures.append(f"values.schema.json let {bad} through")
        except helm_python.HelmError:
            pass

    configmap = yaml.safe_load(chart.render({}, name="shop", namespace="sales")["flashsale/templates/configmap.yaml"])
    binary = os.environ.get("FLASHSALE_BIN") or str(
        pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "flashsale")
    failures += serve_rendered(configmap["data"]["config.toml"], binary)

    # For checkov (scripts/deploy-check.sh): every variant as the pipeline deploys it,
    # the image pinned by digest.
    if os.environ.get("RENDER_DIR"):
        out = pathlib.Path(os.environ["RENDER_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        digest = "sha256:" + "0" * 64
        for name, values in variants:
            pinned = dict(values, image=dict(values.get("image", {}), digest=digest))
            if "pgbouncer" in values:
                pgb = values["pgbouncer"]
                pinned["pgbouncer"] = dict(pgb, image=dict(pgb.get("image", {}), digest=digest))
            rendered = chart.render(pinned, name="shop", namespace="sales")
            docs = [t for p, t in sorted(rendered.items()) if not p.endswith("NOTES.txt") and t.strip()]
            (out / f"{name.removesuffix('.yaml')}.yaml").write_text("\n---\n".join(docs))

    for f in failures:
        print("FAIL", f)
    print("chart check:", "failed" if failures else "ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
