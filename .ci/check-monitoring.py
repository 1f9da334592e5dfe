#!/usr/bin/python3
"""Consistency checks of packaging/monitoring/ that promtool cannot make, called by
.ci/check-monitoring.sh (which runs promtool itself):

1. the PrometheusRule's spec is the plain rules file's groups, byte for byte (indented);
2. every alert has severity, summary, description and a runbook_url pointing at a heading of
   docs/usage/operations.md named like the alert, and every such heading has an alert;
3. every alert is unit-tested: some test of endpoint-copier.rules.test.yaml expects it to fire;
4. every metric named in the rules, their tests and the dashboard is one the daemon registers
   (read from the `register`/`register_with_unit` calls under src/), except those in PENDING;
5. the dashboard is valid JSON, and every panel and query uses the `datasource` variable; with
   `--dashboard-rules FILE`, its queries are written as recording rules for `promtool check rules`;
6. the scrape manifests fit together: the proxy forwards to the packaged default `[metrics]
   listen`, on the host's network, only /metrics; the Service and ServiceMonitor find it.

Prints one line per check; exits 1 naming every failure.
"""

import json
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
MON = REPO / "packaging" / "monitoring"
RULES = MON / "endpoint-copier.rules.yaml"
PROMRULE = MON / "endpoint-copier-prometheusrule.yaml"
TESTS = MON / "endpoint-copier.rules.test.yaml"
DASHBOARD = MON / "endpoint-copier-dashboard.json"
SCRAPE = MON / "endpoint-copier-scrape.yaml"
DEFAULTS = REPO / "packaging" / "config.d" / "10-defaults.toml"
OPERATIONS = REPO / "docs" / "usage" / "operations.md"
RUNBOOK_BASE = (
    "https://github.com/suse-edge/endpoint-copier/blob/main/docs/usage/operations.md#"
)
# Metrics the rules use before the daemon exports them: each with the reason.
PENDING = {}

failures = []


def fail(msg):
    failures.append(msg)
    print(f"    FAIL: {msg}", file=sys.stderr)


def ok(msg, since=None):
    """Prints `msg` as passed unless a failure was recorded after `since` (a len(failures))."""
    if since is None or len(failures) == since:
        print(f"    ok: {msg}")


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading: lowercase, punctuation dropped, spaces to '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


# 1. The PrometheusRule carries the same groups as the plain file.
plain = RULES.read_text()
wrapped = PROMRULE.read_text()
plain_groups = plain[plain.index("\ngroups:") + 1 :]
spec_at = wrapped.find("\nspec:\n")
if spec_at < 0:
    fail(f"{PROMRULE.name} has no 'spec:' line")
else:
    spec_lines = wrapped[spec_at + len("\nspec:\n") :].splitlines(keepends=True)
    unindented = "".join(l[2:] if l.startswith("  ") else l for l in spec_lines)
    if unindented != plain_groups:
        fail(
            f"{PROMRULE.name}'s spec differs from the groups of {RULES.name}; regenerate it: "
            f"keep its header, then: sed -n '/^groups:/,$p' {RULES.name} | sed 's/^/  /'"
        )
    else:
        ok(f"{PROMRULE.name} spec == {RULES.name} groups")
manifest = yaml.safe_load(wrapped)
if manifest.get("apiVersion") != "monitoring.coreos.com/v1" or manifest.get("kind") != "PrometheusRule":
    fail(f"{PROMRULE.name} is not a monitoring.coreos.com/v1 PrometheusRule")

# 2. Labels, annotations and runbooks.
mark = len(failures)
rules = yaml.safe_load(plain)
alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
headings = {}
for line in OPERATIONS.read_text().splitlines():
    m = re.match(r"^(#+)\s+(.*?)\s*$", line)
    if m:
        headings[github_anchor(m.group(2))] = m.group(2)
alert_names = {a["alert"] for a in alerts}
for a in alerts:
    name = a["alert"]
    if a.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
        fail(f"{name}: severity label missing or not critical/warning/info")
    ann = a.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        if not ann.get(key):
            fail(f"{name}: no {key} annotation")
    url = ann.get("runbook_url", "")
    if not url.startswith(RUNBOOK_BASE):
        fail(f"{name}: runbook_url '{url}' does not start with {RUNBOOK_BASE}")
        continue
    anchor = url[len(RUNBOOK_BASE) :]
    if anchor != github_anchor(name):
        fail(f"{name}: runbook_url anchor '#{anchor}' is not the alert's own ('#{github_anchor(name)}')")
    if anchor not in headings:
        fail(f"{name}: docs/usage/operations.md has no heading for '#{anchor}' (add '### {name}' under Alerts)")
ok(f"{len(alerts)} alerts: severity, summary, description, runbook_url into operations.md", mark)
mark = len(failures)
alerts_at = None
lines = OPERATIONS.read_text().splitlines()
for i, line in enumerate(lines):
    if line.strip() == "## Alerts":
        alerts_at = i
if alerts_at is None:
    fail("docs/usage/operations.md has no '## Alerts' section")
else:
    for line in lines[alerts_at + 1 :]:
        m = re.match(r"^###\s+(EndpointCopier\w+)\s*$", line)
        if m and m.group(1) not in alert_names:
            fail(f"operations.md has a runbook for {m.group(1)}, which no rule defines")
        if re.match(r"^##\s", line):
            fail("'## Alerts' must stay the last section of operations.md (the runbooks end it)")
            break
    for m in re.finditer(r"\]\(#([^)]+)\)", "\n".join(lines[alerts_at:])):
        if m.group(1) not in headings:
            fail(f"operations.md, Alerts: the link '#{m.group(1)}' has no heading")
    ok("every runbook heading under '## Alerts' has its alert; every link in it resolves", mark)

# 3. Every alert is tested firing.
mark = len(failures)
tests = yaml.safe_load(TESTS.read_text())
fired = {
    case["alertname"]
    for t in tests["tests"]
    for case in t.get("alert_rule_test", [])
    if case.get("exp_alerts")
}
for name in sorted(alert_names - fired):
    fail(f"{name}: no test in {TESTS.name} expects it to fire")
ok(f"every alert has a test that expects it to fire ({len(fired & alert_names)})", mark)

# 4. Metric names exist.
mark = len(failures)
registered = set()
for path in (REPO / "src").rglob("*.rs"):
    src = path.read_text()
    for m in re.finditer(r'\.register\(\s*"([a-z0-9_]+)"', src):
        registered.add(f"endpoint_copier_{m.group(1)}")
    for m in re.finditer(
        r'\.register_with_unit\(\s*"([a-z0-9_]+)",\s*"(?:[^"\\]|\\.)*",\s*Unit::(\w+)', src
    ):
        registered.add(f"endpoint_copier_{m.group(1)}_{m.group(2).lower()}")
if not registered:
    fail("found no registered metric under src/ (looked for .register(\"name\" and .register_with_unit(\"name\")")
exposed = set()
for base in registered:
    exposed |= {base, f"{base}_total", f"{base}_bucket", f"{base}_sum", f"{base}_count"}


def names_in(text):
    # {__name__=~"endpoint_copier_(a|b)_c"} names endpoint_copier_a_c and endpoint_copier_b_c.
    text = re.sub(
        r"endpoint_copier_\(([a-z0-9_|]+)\)([a-z0-9_]*)",
        lambda m: " ".join(f"endpoint_copier_{a}{m.group(2)}" for a in m.group(1).split("|")),
        text,
    )
    return set(re.findall(r"\bendpoint_copier_[a-z0-9_]+", text))


used = set()
for path in (RULES, TESTS, DASHBOARD):
    for name in names_in(path.read_text()):
        used.add(name)
        if name in exposed:
            continue
        if name in PENDING:
            continue
        fail(f"{path.name} uses {name}, which the daemon does not export (src/metrics/)")
for name, why in PENDING.items():
    if name in exposed:
        print(f"    note: {name} is exported now; remove it from PENDING in .ci/check-monitoring.py ({why})")
    else:
        print(f"    note: {name} is not exported yet, allowed while {why} lands")
ok(f"{len(used)} metric names used, all exported by the daemon or pending", mark)

# 5. The dashboard.
mark = len(failures)
try:
    dash = json.loads(DASHBOARD.read_text())
except json.JSONDecodeError as e:
    fail(f"{DASHBOARD.name} is not JSON: {e}")
    dash = {"panels": []}
variables = [v["name"] for v in dash.get("templating", {}).get("list", [])]
if "datasource" not in variables:
    fail(f"{DASHBOARD.name} has no 'datasource' variable")
queries = 0
for panel in dash.get("panels", []):
    if panel.get("type") == "row":
        continue
    if panel.get("datasource", {}).get("uid") != "${datasource}":
        fail(f"panel '{panel.get('title')}' does not use the ${{datasource}} variable")
    for t in panel.get("targets", []):
        queries += 1
        if t.get("datasource", {}).get("uid") != "${datasource}" or not t.get("expr"):
            fail(f"panel '{panel.get('title')}' query {t.get('refId')}: no expr or not on ${{datasource}}")
ok(f"{DASHBOARD.name}: valid JSON, {queries} queries on ${{datasource}}", mark)

# 6. The scrape manifests.
mark = len(failures)
docs = {d["kind"]: d for d in yaml.safe_load_all(SCRAPE.read_text()) if d}
for kind in ("Namespace", "ServiceAccount", "ClusterRoleBinding", "DaemonSet", "Service", "ServiceMonitor"):
    if kind not in docs:
        fail(f"{SCRAPE.name} has no {kind}")
if {"DaemonSet", "Service", "ServiceMonitor"} <= docs.keys():
    listen = re.search(r'^listen\s*=\s*"([^"]+)"', DEFAULTS.read_text(), re.M)
    pod = docs["DaemonSet"]["spec"]["template"]
    args = pod["spec"]["containers"][0]["args"]
    if not listen or f"--upstream=http://{listen.group(1)}/" not in args:
        fail(f"{SCRAPE.name}: the proxy's --upstream is not the packaged [metrics] listen ({listen.group(1) if listen else 'none'})")
    if "--allow-paths=/metrics" not in args:
        fail(f"{SCRAPE.name}: the proxy must forward /metrics only (--allow-paths=/metrics)")
    if pod["spec"].get("hostNetwork") is not True:
        fail(f"{SCRAPE.name}: the proxy needs hostNetwork to reach the host's loopback")
    pod_labels = pod["metadata"]["labels"]
    svc = docs["Service"]
    if any(pod_labels.get(k) != v for k, v in svc["spec"]["selector"].items()):
        fail(f"{SCRAPE.name}: the Service's selector does not select the proxy pods")
    sm = docs["ServiceMonitor"]
    if any(svc["metadata"]["labels"].get(k) != v for k, v in sm["spec"]["selector"]["matchLabels"].items()):
        fail(f"{SCRAPE.name}: the ServiceMonitor's selector does not select the Service")
    ports = {p["name"] for p in svc["spec"]["ports"]}
    if any(e["port"] not in ports for e in sm["spec"]["endpoints"]):
        fail(f"{SCRAPE.name}: the ServiceMonitor scrapes a port the Service does not have")
ok(f"{SCRAPE.name}: proxy to the packaged listen address, Service and ServiceMonitor agree", mark)

# For promtool: the dashboard's queries as recording rules, Grafana's interval variables replaced,
# so that `promtool check rules` parses every one of them.
if len(sys.argv) == 3 and sys.argv[1] == "--dashboard-rules":
    exprs = [
        t["expr"].replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$__interval", "1m")
        for p in dash.get("panels", [])
        for t in p.get("targets", [])
        if t.get("expr")
    ]
    doc = {
        "groups": [
            {
                "name": "dashboard-queries",
                "rules": [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    Path(sys.argv[2]).write_text(yaml.safe_dump(doc))

if failures:
    print(f"\n{len(failures)} monitoring check(s) failed", file=sys.stderr)
    sys.exit(1)
