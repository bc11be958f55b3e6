#!/usr/bin/env python3
"""Generates alerts/vm-migration.rules.yml from alerts/vm-migration.rules.in.yml:

    python3 alerts/generate.py [--selector 'job="vm-migration-exporter"']
                               [--runbook-base URL] [--out FILE]

Two parameters, applied to every rule, so the rules fit the Prometheus they run in:
  --selector      label matchers added to every selector of an exporter series in every
                  expression (`vm_migration_x{state="a"}` -> `vm_migration_x{SEL,state="a"}`,
                  `up` -> `up{SEL}`); empty: none added. Recording-rule series (names with a
                  colon) already carry it through the rules that made them.
  --runbook-base  absolute URL every alert's runbook_url starts with (then `<Alert>.md`).

The committed output uses the defaults below; the Helm chart renders the same rules with its
own `prometheusRule.selector` / `prometheusRule.runbookBaseUrl`, reading the defaults it
replaces from the header this script writes. Edit the .in file, then run this script and
`bash scripts/sync-chart-files.sh`; `bash scripts/check-alerts.sh` fails when the output is stale.
"""
import argparse
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "vm-migration.rules.in.yml")
OUTPUT = os.path.join(HERE, "vm-migration.rules.yml")
# The job the Helm chart's ServiceMonitor/PodMonitor and the .deb's example scrape config give.
DEFAULT_SELECTOR = 'job="vm-migration-exporter"'
# Where the runbooks of this repository are published (docs/runbooks/ on the default branch).
DEFAULT_RUNBOOK_BASE = "https://github.com/vm-migration-exporter/vm-migration-exporter/blob/main/docs/runbooks/"

# PromQL words that are not series names.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "atan2", "start", "end",
            # aggregation operators (followed by `by (...)` as often as by `(`)
            "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
            "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
# Keywords followed by a parenthesised list of label names.
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def _string_end(s, i):
    """Index after the string literal starting at s[i]."""
    q = s[i]
    j = i + 1
    while j < len(s):
        if s[j] == "\\" and q != "`":
            j += 2
            continue
        if s[j] == q:
            return j + 1
        j += 1
    raise ValueError(f"unterminated string in: {s}")


def _next_nonspace(s, i):
    while i < len(s) and s[i].isspace():
        i += 1
    return i


def _group_end(s, i, open_, close):
    """Index after the bracketed group starting at s[i] == open_ (strings skipped)."""
    depth = 0
    j = i
    while j < len(s):
        c = s[j]
        if c in "\"'`":
            j = _string_end(s, j)
            continue
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    raise ValueError(f"unbalanced {open_}{close} in: {s}")


def _with_selector(braces, selector):
    """`{a="b"}` -> `{SEL,a="b"}`; `{}` -> `{SEL}`."""
    inner = braces[1:-1]
    return "{" + selector + ("," + inner if inner.strip() else "") + "}"


def inject(expr, selector):
    """`expr` with `selector` added to every selector of a series that is not a recording rule's."""
    if not selector:
        return expr
    out = []
    i = 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            j = _string_end(expr, i)
            out.append(expr[i:j])
            i = j
        elif c == "#":
            j = expr.find("\n", i)
            j = len(expr) if j < 0 else j
            out.append(expr[i:j])
            i = j
        elif c == "[":
            j = _group_end(expr, i, "[", "]")
            out.append(expr[i:j])
            i = j
        elif c.isdigit() or (c == "." and i + 1 < len(expr) and expr[i + 1].isdigit()):
            m = re.compile(r"[0-9A-Za-z_.]+").match(expr, i)
            out.append(m.group(0))
            i = m.end()
        elif c == "{":
            # A selector without a name ({__name__=~"..."}).
            k = _group_end(expr, i, "{", "}")
            out.append(_with_selector(expr[i:k], selector))
            i = k
        elif IDENT.match(expr, i):
            m = IDENT.match(expr, i)
            name = m.group(0)
            i = m.end()
            j = _next_nonspace(expr, i)
            nxt = expr[j] if j < len(expr) else ""
            out.append(name)
            if name in LABEL_LISTS:
                if nxt == "(":
                    k = _group_end(expr, j, "(", ")")
                    out.append(expr[i:k])
                    i = k
            elif name in KEYWORDS or nxt == "(" or ":" in name:
                pass  # a keyword, a function, a recording rule's series
            elif nxt == "{":
                k = _group_end(expr, j, "{", "}")
                out.append(expr[i:j] + _with_selector(expr[j:k], selector))
                i = k
            else:
                out.append("{" + selector + "}")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def generate(text, selector, runbook_base):
    lines = text.split("\n")
    out = []
    alert = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^(\s*)- alert: (\S+)\s*$", line)
        if m:
            alert = m.group(2)
        if re.match(r"^(\s*)- (record|alert): ", line) and not m:
            alert = None
        m = re.match(r"^(\s*)expr: ?(.*)$", line)
        if m:
            indent, rest = m.group(1), m.group(2).strip()
            if rest in (">", ">-", "|", "|-"):
                body = []
                i += 1
                while i < len(lines) and (lines[i].strip() == "" or
                                          len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
                    body.append(lines[i])
                    i += 1
                while body and body[-1].strip() == "":
                    i -= 1
                    body.pop()
                inner = indent + "  "
                expr = "\n".join(b[len(inner):] if b.startswith(inner) else b.strip() for b in body)
                style = rest
            else:
                expr, style = rest, ">-"
                i += 1
            # Block scalars only: the chart replaces the selector in this text, and a block
            # scalar takes any selector literally.
            out.append(f"{indent}expr: {style}")
            out.extend(inner_line if not inner_line.strip() else f"{indent}  {inner_line}"
                       for inner_line in inject(expr, selector).split("\n"))
            continue
        m = re.match(r"^(\s*)runbook_url: .*$", line)
        if m:
            if alert is None:
                raise SystemExit(f"runbook_url outside an alert: {line.strip()}")
            out.append(f"{m.group(1)}runbook_url: {runbook_base}{alert}.md")
            i += 1
            continue
        out.append(line)
        i += 1
    header = (
        "# GENERATED by alerts/generate.py from alerts/vm-migration.rules.in.yml: edit that file.\n"
        f"# selector: {selector}\n"
        f"# runbook_base: {runbook_base}\n"
    )
    return header + "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--selector", default=DEFAULT_SELECTOR)
    ap.add_argument("--runbook-base", default=DEFAULT_RUNBOOK_BASE)
    ap.add_argument("--out", default=OUTPUT)
    a = ap.parse_args()
    if a.runbook_base and not re.match(r"^https?://\S+/$", a.runbook_base):
        sys.exit("--runbook-base must be an absolute http(s) URL ending in /")
    text = generate(open(SOURCE).read(), a.selector, a.runbook_base)
    with open(a.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
