#!/usr/bin/env python3
"""Check yocto/kas/*.yml offline: each file against kas's own configuration schema (from the kas
package), includes that exist, the local layers that exist, and every other repository with a
url and a branch, poky, meta-rauc and meta-openembedded also pinned to a commit. (kas itself
would clone the repositories, which needs the network.)"""

import glob
import json
import os
import sys

import jsonschema
import kas
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PINNED = {"poky", "meta-rauc", "meta-openembedded"}


def main():
    schema = json.load(open(os.path.join(os.path.dirname(kas.__file__), "schema-kas.json")))
    problems = []
    files = sorted(glob.glob(os.path.join(ROOT, "yocto", "kas", "*.yml")))
    for path in files:
        rel = os.path.relpath(path, ROOT)
        config = yaml.safe_load(open(path))
        try:
            jsonschema.validate(config, schema)
        except jsonschema.ValidationError as e:
            problems.append(f"{rel}: {e.message} (at {'/'.join(map(str, e.absolute_path))})")
            continue
        for include in config["header"].get("includes", []):
            if isinstance(include, str) and not os.path.exists(os.path.join(ROOT, include)):
                problems.append(f"{rel}: includes {include}, which does not exist")
        for name, repo in (config.get("repos") or {}).items():
            repo = repo or {}
            if "url" not in repo:
                for layer in repo.get("layers") or {}:
                    if not os.path.exists(os.path.join(ROOT, layer, "conf", "layer.conf")):
                        problems.append(f"{rel}: layer {layer} has no conf/layer.conf")
                continue
            if "branch" not in repo:
                problems.append(f"{rel}: repository {name} names no branch")
            if name in PINNED and "commit" not in repo:
                problems.append(f"{rel}: repository {name} is not pinned to a commit")
    for p in problems:
        print("  FAIL " + p)
    print(f"kas check: {len(files)} file(s), {len(problems)} problem(s)")
    return 1 if problems or not files else 0


if __name__ == "__main__":
    sys.exit(main())
