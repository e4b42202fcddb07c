#!/usr/bin/env python3
"""Checks a dashboard and alert rules against a Prometheus scraping a live switchboard node.

    check.py PROMETHEUS_URL DASHBOARD_JSON ALERTS_YAML

Every query of every dashboard panel must return data, every alert rule must load and evaluate
without error, and every metric an alert names must be one the node exports. Waits (up to a
minute) for the first scrapes; exits non-zero listing what failed.
"""

import json
import re
import sys
import time
import urllib.parse
import urllib.request

import yaml

# PromQL words that are not metric names.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}


def api(prometheus, path, **params):
    url = f"{prometheus}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"{path} {params}: {body}")
    return body["data"]


def query(prometheus, expr):
    return api(prometheus, "query", query=expr)["result"]


def metric_names(expr):
    """The metric names an expression reads: identifiers that are not functions, keywords,
    label names, label values or durations."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)           # label values, strings
    expr = re.sub(r"\{[^}]*\}", "", expr)                    # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                   # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        name, rest = match.group(0), expr[match.end():].lstrip()
        if name.lower() in KEYWORDS or rest.startswith("("):
            continue
        names.add(name)
    return names


def main(prometheus, dashboard_path, alerts_path):
    with open(dashboard_path) as f:
        dashboard = json.load(f)
    with open(alerts_path) as f:
        rules = [rule for group in yaml.safe_load(f)["groups"] for rule in group["rules"]]

    # Rates need two scrapes and a rule evaluation after them.
    deadline = time.time() + 60
    while True:
        up = query(prometheus, 'count_over_time(up{job="switchboard"}[1m])')
        if up and float(up[0]["value"][1]) >= 5:
            break
        if time.time() > deadline:
            sys.exit("Prometheus did not scrape the node five times within a minute")
        time.sleep(1)

    failures = []
    queries = 0
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queries += 1
            if not query(prometheus, target["expr"]):
                failures.append(f"panel {panel['title']!r}: no data for {target['expr']}")

    exported = set(api(prometheus, "label/__name__/values"))
    for rule in rules:
        for name in sorted(metric_names(rule["expr"]) - exported):
            failures.append(f"alert {rule['alert']}: the node exports no metric {name}")
    loaded = {rule["name"]: rule for group in api(prometheus, "rules")["groups"]
              for rule in group["rules"]}
    for rule in rules:
        state = loaded.get(rule["alert"])
        if state is None:
            failures.append(f"alert {rule['alert']}: not loaded by Prometheus")
        elif state.get("health") != "ok":
            failures.append(f"alert {rule['alert']}: {state.get('health')} {state.get('lastError')}")

    if failures:
        sys.exit("\n".join(failures))
    print(f"monitoring: {queries} dashboard queries return data; {len(rules)} alert rules load, "
          f"evaluate and name only exported metrics")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
