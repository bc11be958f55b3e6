#!/usr/bin/env python3
"""Checks rendered rules: python3 alerts/check_rules.py RULES.yml SELECTOR RUNBOOK_BASE

- every selector of an exporter series (`vm_migration_*` and `up`, not recording rules' series,
  which carry a colon) in every expression carries SELECTOR as its first matchers
  (an empty SELECTOR: carries none);
- every alert's runbook_url is RUNBOOK_BASE + <AlertName>.md, and docs/runbooks/<AlertName>.md
  exists in this repository.

Independent of alerts/generate.py's tokenizer: string literals are blanked, then every series
name is looked at with a regular expression. Prints the problems and exits 1 when there are any.
"""
import os
import re
import sys

import yaml

NAME = re.compile(r"(?<![\w:])(vm_migration_[a-z0-9_]+|up)(?![\w:])")


def blank_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', lambda m: '"' + "_" * (len(m.group(0)) - 2) + '"', expr)


def problems(rules, selector, base, root="."):
    out = []
    for g in rules["groups"]:
        for r in g["rules"]:
            who = r.get("alert") or r.get("record")
            expr = r["expr"]
            blanked = blank_strings(expr)
            for m in NAME.finditer(blanked):
                rest = expr[m.end():].lstrip()
                # `up` and vm_migration_ words used as functions do not exist; a name followed
                # by `(` would be one.
                if rest.startswith("("):
                    continue
                want = "{" + selector if selector else "{"
                if not rest.startswith(want) or (selector and rest[len(want)] not in ",}"):
                    out.append(f"{who}: {m.group(1)} is not selected with {{{selector}}}: {expr.strip()}")
                if not selector and rest.startswith("{") and "job=" in rest.split("}", 1)[0]:
                    out.append(f"{who}: {m.group(1)} keeps a job matcher with an empty selector")
            if "alert" in r:
                url = r.get("annotations", {}).get("runbook_url", "")
                if url != f"{base}{who}.md":
                    out.append(f"{who}: runbook_url {url!r} is not {base}{who}.md")
                if not os.path.isfile(os.path.join(root, "docs", "runbooks", f"{who}.md")):
                    out.append(f"{who}: docs/runbooks/{who}.md is missing")
    return out


def main():
    path, selector, base = sys.argv[1:4]
    p = problems(yaml.safe_load(open(path)), selector, base)
    if p:
        print("\n".join(p))
        sys.exit(1)


if __name__ == "__main__":
    main()
