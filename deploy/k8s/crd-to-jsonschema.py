#!/usr/bin/env python3
"""Turns CustomResourceDefinitions into the JSON schemas kubeconform reads.

Usage: crd-to-jsonschema.py OUT_DIR CRD_FILE...

Each served version of each CRD becomes OUT_DIR/{group}/{kind}_{version}.json (kind in lower
case, kubeconform's `{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}` layout). Strict like
kubeconform's own schemas: an object that lists its properties refuses others, unless the CRD
says `x-kubernetes-preserve-unknown-fields`.
"""

import json
import sys
from pathlib import Path

import yaml


def strict(schema):
    if isinstance(schema, dict):
        if (schema.get("type") == "object" and "properties" in schema
                and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


def main():
    out = Path(sys.argv[1])
    written = 0
    for path in sys.argv[2:]:
        for document in yaml.safe_load_all(Path(path).read_text()):
            if not document or document.get("kind") != "CustomResourceDefinition":
                continue
            spec = document["spec"]
            group, kind = spec["group"], spec["names"]["kind"].lower()
            for version in spec["versions"]:
                schema = version.get("schema", {}).get("openAPIV3Schema")
                if not schema or not version.get("served", True):
                    continue
                schema = strict(schema)
                # apiVersion and kind are checked by kubeconform itself; metadata is free-form.
                properties = schema.setdefault("properties", {})
                properties.setdefault("apiVersion", {"type": "string"})
                properties.setdefault("kind", {"type": "string"})
                properties["metadata"] = {"type": "object"}
                target = out / group / f"{kind}_{version['name']}.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(schema))
                written += 1
    print(f"{written} schemas in {out}")


if __name__ == "__main__":
    main()
