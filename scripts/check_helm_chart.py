#!/usr/bin/env python3
"""Checks of helm/entidb that need no helm binary (there is none on the development machine,
so the chart is never rendered here; docs/operations.md says so):

* Chart.yaml has the fields Helm requires, and its name is the chart's folder;
* every `.Values.x.y` a template reads exists in values.yaml, and every value in values.yaml
  is read by some template (or under a map a template passes whole to toYaml);
* template actions are balanced: each `if`/`with`/`range`/`define` has its `end`;
* the container matches docker/Dockerfile: port, data directory, user.

Usage: check_helm_chart.py [REPO_ROOT]. Exits 1 with one line per problem.
"""

import pathlib
import re
import sys

import yaml

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
chart = root / "helm" / "entidb"
problems = []


def problem(text):
    problems.append(text)


meta = yaml.safe_load((chart / "Chart.yaml").read_text())
for field in ("apiVersion", "name", "version"):
    if not meta.get(field):
        problem(f"Chart.yaml: missing {field}")
if meta.get("apiVersion") != "v2":
    problem("Chart.yaml: apiVersion must be v2")
if meta.get("name") != chart.name:
    problem(f"Chart.yaml: name {meta.get('name')!r} is not the folder's name {chart.name!r}")
if not re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", str(meta.get("version", ""))):
    problem(f"Chart.yaml: version {meta.get('version')!r} is not SemVer")

values = yaml.safe_load((chart / "values.yaml").read_text())
templates = {p.name: p.read_text() for p in sorted((chart / "templates").iterdir())}


def lookup(path):
    node = values
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


read = set()
for name, text in templates.items():
    for match in re.finditer(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text):
        path = tuple(match.group(1).split(".")[1:])
        read.add(path)
        if not lookup(path):
            problem(f"{name}: reads .Values.{'.'.join(path)}, which values.yaml does not define")


def leaves(node, prefix=()):
    if isinstance(node, dict) and node:
        for key, child in node.items():
            yield from leaves(child, prefix + (key,))
    else:
        yield prefix


for leaf in leaves(values):
    # Read itself, or under a map a template reads whole.
    if not any(leaf[: len(p)] == p for p in read):
        problem(f"values.yaml: {'.'.join(leaf)} is read by no template")

opening = re.compile(r"^(if|with|range|define|block)\b")
for name, text in templates.items():
    if text.count("{{") != text.count("}}"):
        problem(f"{name}: unbalanced {{{{ and }}}}")
    depth = 0
    for action in re.findall(r"{{-?\s*(.*?)\s*-?}}", text, re.S):
        if action.startswith("/*"):
            continue
        if opening.match(action):
            depth += 1
        elif re.match(r"^end\b", action):
            depth -= 1
            if depth < 0:
                problem(f"{name}: an `end` without its block")
                depth = 0
    if depth != 0:
        problem(f"{name}: {depth} block(s) without `end`")

dockerfile = (root / "docker" / "Dockerfile").read_text()
stage = dockerfile[dockerfile.rindex("\nFROM ") :]
listen = re.search(r"ENTIDB_LISTEN=[^\s:]+:(\d+)", stage)
data_dir = re.search(r"ENTIDB_DATA_DIR=(\S+)", stage)
user = re.search(r"^USER (\d+)", stage, re.M)
statefulset = templates["statefulset.yaml"]
if not listen or f"containerPort: {listen.group(1)}" not in statefulset:
    problem("statefulset.yaml: containerPort is not the image's ENTIDB_LISTEN port")
if not listen or f'value: "0.0.0.0:{listen.group(1)}"' not in statefulset:
    problem("statefulset.yaml: ENTIDB_LISTEN is not the image's")
if not data_dir or f"mountPath: {data_dir.group(1)}" not in statefulset:
    problem("statefulset.yaml: the volume is not mounted on the image's ENTIDB_DATA_DIR")
if not user or values["podSecurityContext"].get("runAsUser") != int(user.group(1)):
    problem("values.yaml: podSecurityContext.runAsUser is not the image's USER")

for p in problems:
    print(f"helm/entidb: {p}")
if problems:
    sys.exit(1)
print(f"helm/entidb: {len(templates)} templates, {len(read)} value paths checked")
