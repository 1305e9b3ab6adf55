"""`metatune schema`: the JSON Schema of each file kind accepts every shipped file of that kind
and rejects what metatune's validation rejects in the common cases (checked with jsonschema)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from metatune.schema import file_schema

ROOT = Path(__file__).resolve().parents[1]
FILES = {
    "run": sorted((ROOT / "configs").rglob("*.yaml")),
    "study": sorted((ROOT / "studies").glob("*.yaml")),
    "search-space": sorted((ROOT / "search_spaces").glob("*.yaml")),
}


def validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = file_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("kind", list(FILES))
def test_every_shipped_file_matches_its_schema(kind):
    assert FILES[kind], f"no shipped {kind} files found"
    check = validator(kind)
    for path in FILES[kind]:
        errors = [e.message for e in check.iter_errors(yaml.safe_load(path.read_text()))]
        assert not errors, f"{path.relative_to(ROOT)}: {errors[:3]}"


def test_run_schema_rejects_what_validation_rejects():
    check = validator("run")
    good = yaml.safe_load((ROOT / "configs" / "paper" / "sine_maml_maml_protocol.yaml").read_text())
    assert check.is_valid(good)
    for path, value in [
        (("learner", "inner_lr"), -1.0),           # outside the declared range
        (("learner", "alpha"), 0.1),               # not a maml setting
        (("learner", "name"), "reptile"),          # not a learner
        (("task", "protocol"), "finn"),            # not a sine protocol
        (("training", "iterations"), "many"),      # not an integer
        (("compile",), "maybe"),                   # true | false | auto
    ]:
        bad = copy.deepcopy(good)
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert not check.is_valid(bad), path


def test_cli_prints_json_schema():
    out = subprocess.run([sys.executable, "-m", "metatune.cli", "schema", "study"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    assert schema["$schema"].endswith("2020-12/schema") and "learners" in schema["properties"]
