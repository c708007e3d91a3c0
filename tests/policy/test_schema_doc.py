"""docs/policy.schema.json is generated from the pydantic models and must not drift from them.

Regenerate with: .venv/bin/python -m tests.policy.test_schema_doc
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from corral.policy.builtin import builtin_names, builtin_path
from corral.policy.schema import PolicyModel

DOC = Path(__file__).resolve().parents[2] / "docs" / "policy.schema.json"


def generate() -> str:
    schema = PolicyModel.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "corral policy"
    schema["description"] = ("A corral policy file (docs/policy.md). Generated from "
                             "corral/policy/schema.py; corral's loader checks more than this "
                             "schema can say (host patterns, path globs, units, cross-field "
                             "rules).")
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def test_the_published_schema_is_the_models() -> None:
    assert DOC.read_text(encoding="utf-8") == generate(), (
        "docs/policy.schema.json is stale: run .venv/bin/python -m tests.policy.test_schema_doc")


def test_every_builtin_fits_the_published_schema() -> None:
    import jsonschema

    schema = json.loads(DOC.read_text(encoding="utf-8"))
    for name in builtin_names():
        path = builtin_path(name)
        assert path is not None
        jsonschema.validate(yaml.safe_load(path.read_text(encoding="utf-8")), schema)


if __name__ == "__main__":
    DOC.write_text(generate(), encoding="utf-8")
    print(f"wrote {DOC}")
