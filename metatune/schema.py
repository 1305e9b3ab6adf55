"""JSON Schema of metatune's three file kinds -- run config, study file, search space -- for
editors that complete and check YAML (``metatune schema run|study|search-space``).

The sections come from the declarations metatune validates with: the config dataclasses
(through pydantic's JSON Schema generator), every registered task and backbone (its dataclass
fields), and every learner's settings (``Learner.hyperparameters``, derived from its
``config_class``: valid range, choices, default, help). The
schema is a guide for editors; metatune's own validation, with its one-line errors, decides.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import pydantic

from metatune.learners import LEARNERS, HyperParameter
from metatune.models import BACKBONES
from metatune.tasks import TASKS

__all__ = ["KINDS", "file_schema"]

Schema = dict[str, Any]
KINDS = ("run", "study", "search-space")
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _dataclass_schema(cls: type, defs: Schema, *, drop: tuple[str, ...] = ()) -> Schema:
    """``cls``'s fields as an object schema; nested definitions go into ``defs``."""
    schema = pydantic.TypeAdapter(cls).json_schema(ref_template="#/$defs/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        defs.setdefault(name, sub)
    for name in drop:
        schema.get("properties", {}).pop(name, None)
        if name in schema.get("required", []):
            schema["required"].remove(name)
    schema.pop("title", None)
    return schema


def _named(registry_kind: str, name: str, body: Schema) -> Schema:
    """``body`` with a ``name: <const>`` property, closed to unknown keys."""
    out = copy.deepcopy(body)
    out["properties"] = {"name": {"const": name}, **out.get("properties", {})}
    out["required"] = ["name", *out.get("required", [])]
    out["additionalProperties"] = False
    out["title"] = f"{registry_kind} {name}"
    return out


def _hyperparameter(h: HyperParameter) -> Schema:
    s: Schema
    if h.kind == "bool":
        s = {"type": "boolean"}
    elif h.kind == "categorical":
        s = {"enum": list(h.choices)}
    else:
        s = {"type": "integer" if h.kind == "int" else "number"}
        if h.low is not None:
            s["exclusiveMinimum" if h.low_open else "minimum"] = h.low
        if h.high is not None:
            s["maximum"] = h.high
    if h.default is not None:
        s["default"] = h.default
    symbol = f" ({h.symbol})" if h.symbol else ""
    source = f" [{h.source}]" if h.source else ""  # where the default comes from
    s["description"] = f"{h.help}{symbol}{source}".strip()
    return s


def _learner_settings(name: str) -> Schema:
    cls = LEARNERS.get(name)
    props = {h.name: _hyperparameter(h) for h in cls.hyperparameters}
    return {"type": "object", "properties": props, "additionalProperties": False}


def _sections(defs: Schema) -> dict[str, Schema]:
    tasks = [_named("task", n, _dataclass_schema(TASKS.get(n), defs)) for n in TASKS.names()]
    # A backbone's input shape and output width come from the task, not from the file.
    models = [_named("model", n, _dataclass_schema(BACKBONES.get(n), defs, drop=("input_shape", "output_dim")))
              for n in BACKBONES.names()]
    learners = [_named("learner", n, _learner_settings(n)) for n in LEARNERS.names()]
    return {"task": {"oneOf": tasks}, "model": {"oneOf": [*models, {"type": "null"}]},
            "learner": {"oneOf": learners}}


def _run_schema(defs: Schema) -> Schema:
    from metatune.config import RunConfig

    schema = _dataclass_schema(RunConfig, defs)
    schema["properties"].update(_sections(defs))
    return schema


def _study_schema(defs: Schema) -> Schema:
    from metatune.study.schema import StudySpec

    schema = _dataclass_schema(StudySpec, defs)
    sections = _sections(defs)
    names = LEARNERS.names()
    schema["properties"]["task"] = sections["task"]
    schema["properties"]["model"] = sections["model"]
    schema["properties"]["learners"] = {"oneOf": [
        {"type": "array", "items": {"enum": names}, "minItems": 1, "uniqueItems": True},
        {"type": "object", "propertyNames": {"pattern": "^[A-Za-z][A-Za-z0-9_]*$"},
         "properties": {n: {"type": ["object", "null"]} for n in names},
         # A variant: any label, with `learner: <registered name>` inside.
         "additionalProperties": {"type": "object", "required": ["learner"],
                                  "properties": {"learner": {"enum": names}}},
         "description": "learner (or a variant label with `learner: NAME`) -> its fixed settings "
                        "(see `metatune learners`)"},
    ]}
    return schema


def _search_space_schema(defs: Schema) -> Schema:
    from metatune.study.search_space import _ParamFile, _SpaceFile

    schema = _dataclass_schema(_SpaceFile, defs)
    param = _dataclass_schema(_ParamFile, defs)
    param["additionalProperties"] = False
    # A bare list is shorthand for {choices: [...]}, and null for the declared default range.
    defs["Param"] = {"anyOf": [param, {"type": "array", "minItems": 1}, {"type": "null"}]}
    schema["properties"]["params"] = {"type": "object", "additionalProperties": {"$ref": "#/$defs/Param"},
                                      "description": "setting -> range, choices or grid, for every learner"}
    schema["properties"]["per_learner"] = {
        "type": "object", "propertyNames": {"enum": LEARNERS.names()},
        "additionalProperties": {"type": "object", "additionalProperties": {"$ref": "#/$defs/Param"}},
        "description": "learner -> setting -> range, choices or grid, for that learner only",
    }
    return schema


def file_schema(kind: Literal["run", "study", "search-space"]) -> Schema:
    """The JSON Schema (draft 2020-12) of one kind of metatune file."""
    builders = {"run": _run_schema, "study": _study_schema, "search-space": _search_space_schema}
    defs: Schema = {}
    body = builders[kind](defs)
    body["additionalProperties"] = False
    out: Schema = {"$schema": DRAFT, "title": f"metatune {kind} file", **body}
    if defs:
        out["$defs"] = defs
    return out
