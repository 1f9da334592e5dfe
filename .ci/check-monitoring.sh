#!/usr/bin/env bash
# Checks packaging/monitoring/, called by .ci/run: the alerting rules parse (`promtool check
# rules`, for the plain file, the PrometheusRule's spec and the dashboard's queries), their unit
# tests pass (`promtool test rules`), and .ci/check-monitoring.py's consistency checks (the two
# rule files agree, runbooks exist in docs/usage/operations.md, every alert is tested, every
# metric exists, the dashboard is sound). Installs Debian's `prometheus` (for promtool) and
# python3-yaml only if they are missing. Exits non-zero at the first failing step, naming it.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
mon=packaging/monitoring

step() { printf '\n==> %s\n' "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
fail() { printf '    FAIL: %s\n' "$*" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/check-monitoring.XXXXXX")
trap 'rm -rf "$work"' EXIT

step "tools: promtool, python3 with yaml"
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
/usr/bin/python3 -c 'import yaml' >/dev/null 2>&1 || missing+=(python3-yaml)
if [[ ${#missing[@]} -gt 0 ]]; then
  printf '    installing %s\n' "${missing[*]}"
  # prometheus's recommends (node-exporter, the web console's libraries) are not needed.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
    || fail "apt-get install ${missing[*]} failed"
fi
ok "$(promtool --version 2>&1 | head -n1)"

step "promtool check rules: $mon/endpoint-copier.rules.yaml"
promtool check rules "$mon/endpoint-copier.rules.yaml" || fail "the rules do not parse"

step "promtool check rules: the PrometheusRule's spec"
/usr/bin/python3 -c '
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
yaml.safe_dump(doc["spec"], open(sys.argv[2], "w"))
' "$mon/endpoint-copier-prometheusrule.yaml" "$work/prometheusrule-spec.yaml" \
  || fail "cannot read the spec of $mon/endpoint-copier-prometheusrule.yaml"
promtool check rules "$work/prometheusrule-spec.yaml" || fail "the PrometheusRule's rules do not parse"

step "promtool test rules: $mon/endpoint-copier.rules.test.yaml"
(cd "$mon" && promtool test rules endpoint-copier.rules.test.yaml) || fail "a rule unit test failed"

step "consistency: rule files, runbooks, tests, metric names, dashboard"
/usr/bin/python3 .ci/check-monitoring.py --dashboard-rules "$work/dashboard-queries.yaml" \
  || fail ".ci/check-monitoring.py found problems (listed above)"

step "promtool check rules: the dashboard's queries"
promtool check rules "$work/dashboard-queries.yaml" || fail "a dashboard query does not parse"

printf '\nmonitoring checks passed\n'
