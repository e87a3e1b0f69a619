#!/usr/bin/env python3
"""Makes kubernetes-validate's schemas of one Kubernetes version standalone for kubeconform.

Usage: core-to-standalone.py IN_DIR OUT_DIR

kubernetes-validate keeps every definition in one `_definitions.json` that the kind schemas
reference by an absolute path, which kubeconform cannot follow. Each kind schema (one with
`apiVersion` and `kind` properties) is written to OUT_DIR under the same file name with the
definitions it reaches copied into its own `$defs`, and the references made local.
"""

import json
import sys
from pathlib import Path

PREFIX = "/api/_definitions.json#/$defs/"
# Inside _definitions.json the same definitions refer to each other locally.
LOCAL = "#/$defs/"


def references(node, found):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            for prefix in (PREFIX, LOCAL):
                if ref.startswith(prefix):
                    found.add(ref[len(prefix):])
        for value in node.values():
            references(value, found)
    elif isinstance(node, list):
        for value in node:
            references(value, found)


def localise(node):
    if isinstance(node, dict):
        return {key: (value.replace(PREFIX, "#/$defs/") if key == "$ref" and isinstance(value, str)
                      else localise(value)) for key, value in node.items()}
    if isinstance(node, list):
        return [localise(value) for value in node]
    return node


def main():
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    definitions = json.loads((source / "_definitions.json").read_text())["$defs"]
    written = 0
    for path in sorted(source.glob("*.json")):
        if path.name.startswith("_"):
            continue
        schema = json.loads(path.read_text())
        properties = schema.get("properties", {})
        if "apiVersion" not in properties or "kind" not in properties:
            continue
        needed, pending = set(), set()
        references(schema, pending)
        while pending:
            name = pending.pop()
            if name in needed or name not in definitions:
                continue
            needed.add(name)
            references(definitions[name], pending)
        schema = localise(schema)
        schema["$defs"] = {name: localise(definitions[name]) for name in sorted(needed)}
        (out / path.name).write_text(json.dumps(schema))
        written += 1
    print(f"{written} standalone kind schemas in {out}")


if __name__ == "__main__":
    main()
