#!/usr/bin/env python3
"""Cross-checks the metric names of deploy/ against what the server exports.

Every metric a query in the Grafana dashboard, the alert rules or the rule
tests names must be one the server exports: seen in a real /metrics scrape
(histograms as <name>_bucket / _sum / _count), or a labelled family the
source declares that simply has no series yet in that scrape (a counter
vector shows nothing until its first increment). A sanity check keeps the
comparison honest: every unlabelled metric the source declares must be in
the scrape (else the binary is not the source's, or the parse is wrong);
families exported but not found in the source are noted.

Usage: metric_names.py SRC_DIR SCRAPE_FILE RULES.yml RULES_TEST.yml DASHBOARD.json
Exit status 1, naming each unknown name and where it is used, on failure.
"""

import json
import pathlib
import re
import sys

import yaml

# Names not exported by the server that the rules may use, and where they come from.
EXTERNAL = {
    "up": "Prometheus itself: whether a scrape target answered",
    "probe_success": "the blackbox exporter probing GET /readyz (deploy/README.md)",
}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# A metric constructor of the prometheus crate and the name it registers.
DECLARATION = re.compile(
    r"\b(IntCounterVec|IntCounter|CounterVec|Counter|IntGaugeVec|IntGauge|GaugeVec|Gauge"
    r"|HistogramVec|Histogram)::(?:new|with_opts)\(\s*(?:(?:Histogram)?Opts::new\(\s*)?"
    r'"(danmaku_[a-z0-9_]*)"'
)

PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "bool", "offset", "inf", "nan", "atan2",
}


def declared_in_source(src):
    """{name: (type, labelled)} of every metric the source registers."""
    found = {}
    for path in sorted(pathlib.Path(src).rglob("*.rs")):
        for ctor, name in DECLARATION.findall(path.read_text(encoding="utf-8")):
            kind = "histogram" if "Histogram" in ctor else "counter" if "Counter" in ctor else "gauge"
            found[name] = (kind, ctor.endswith("Vec"))
    return found


def scraped(text):
    """({family: type} from # TYPE lines, {sample names}) of a /metrics text."""
    families, samples = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            families[name] = kind.strip()
        elif line and not line.startswith("#"):
            samples.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return families, samples


def names_in_promql(expr):
    """Metric names a PromQL expression (Grafana variables allowed) selects."""
    names = []
    # label_values(metric, label) in Grafana variable queries.
    for m in re.finditer(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{,]", expr):
        names.append(m.group(1))
    expr = re.sub(r"label_values\([^)]*\)", " ", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', " ", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges, subqueries
    expr = re.sub(r"\$\{[^}]*\}|\$[a-zA-Z_][a-zA-Z0-9_]*", " ", expr)  # Grafana variables
    # Label lists of by / without / on / ignoring / group_left / group_right.
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    for m in re.finditer(r"[0-9][0-9a-zA-Z_.]*|[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word = m.group(0)
        if word[0].isdigit() or word.lower() in PROMQL_KEYWORDS:
            continue
        if re.match(r"\s*\(", expr[m.end():]):  # a function or an aggregation
            continue
        names.append(word)
    return names


def uses_in_rules(path):
    """(where, name) of every metric the rules' expressions select, and the recorded names."""
    doc = yaml.safe_load(pathlib.Path(path).read_text(encoding="utf-8"))
    uses, recorded = [], set()
    for group in doc["groups"]:
        for rule in group["rules"]:
            what = rule.get("alert") or rule.get("record")
            if "record" in rule:
                recorded.add(rule["record"])
            uses += [(f"{path}: {what}", n) for n in names_in_promql(rule["expr"])]
    return uses, recorded


def uses_in_rule_tests(path):
    """(where, name) of every input series and promql_expr_test of a promtool test file."""
    doc = yaml.safe_load(pathlib.Path(path).read_text(encoding="utf-8"))
    uses = []
    for i, test in enumerate(doc["tests"]):
        for s in test.get("input_series", []):
            uses.append((f"{path}: test {i + 1} input", s["series"].split("{")[0].strip()))
        for t in test.get("promql_expr_test", []):
            uses += [(f"{path}: test {i + 1} expr", n) for n in names_in_promql(t["expr"])]
    return uses


def uses_in_dashboard(path):
    """(where, name) of every panel query and variable query of a dashboard."""
    doc = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    uses = []

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(doc.get("panels", [])):
        for t in p.get("targets", []):
            if "expr" in t:
                uses += [(f"{path}: panel \"{p.get('title')}\"", n) for n in names_in_promql(t["expr"])]
    for v in doc.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            uses += [(f"{path}: variable ${v['name']}", n) for n in names_in_promql(q)]
    return uses


def main(src, scrape, rules, rules_test, dashboard):
    declared = declared_in_source(src)
    families, samples = scraped(pathlib.Path(scrape).read_text(encoding="utf-8"))
    errors = []
    undeclared = sorted(n for n in families if n.startswith("danmaku_") and n not in declared)
    if undeclared:
        # Exported all the same; either the binary is newer than the source
        # or DECLARATION missed a constructor.
        print(f"metric names: note: exported but not found in {src}: {', '.join(undeclared)}")
    for name, (kind, labelled) in sorted(declared.items()):
        if not labelled and name not in families:
            errors.append(f"{name} is declared in {src} but the server did not export it: "
                          "is the binary built from this source?")

    rule_uses, recorded = uses_in_rules(rules)
    uses = rule_uses + uses_in_rule_tests(rules_test) + uses_in_dashboard(dashboard)
    exported = dict(families)
    exported.update({n: k for n, (k, labelled) in declared.items() if labelled and n not in exported})
    quiet = set()
    for where, name in uses:
        if name in EXTERNAL or name in recorded or name in samples:
            continue
        base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        if base and exported.get(base) == "histogram":
            quiet.add(name)  # a histogram vector with no series in this scrape
            continue
        if exported.get(name) == "histogram":
            errors.append(f"{where}: {name} is a histogram: query {name}_bucket, _sum or _count")
        elif name in exported:
            quiet.add(name)  # a labelled family with no series in this scrape
        else:
            errors.append(f"{where}: unknown metric name {name} (not exported by the server)")
    if errors:
        print("metric names: FAILED", file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        return 1
    names = sorted({n for _, n in uses})
    print(f"metric names: {len(names)} names in {len(uses)} uses, all exported"
          + (f" ({len(quiet)} declared families without series in this scrape: {', '.join(sorted(quiet))})"
             if quiet else ""))
    for name in names:
        if name in EXTERNAL:
            print(f"  {name}: not the server's; from {EXTERNAL[name]}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
