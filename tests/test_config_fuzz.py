"""Property test: any mutation of a valid run config either builds or raises ConfigError whose
field names a real path of the config; never another exception type."""

from __future__ import annotations

import copy
import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metatune.config import RunConfig, parse_config
from metatune.errors import ConfigError

VALID = {
    "seed": 0,
    "task": {"name": "sine", "protocol": "metasgd", "shots": 5},
    "model": {"name": "mlp", "hidden": [8, 8]},
    "learner": {"name": "mtnet", "inner_lr": 0.01, "inner_steps": 1, "mask_temperature": 1.0},
    "training": {"iterations": 10, "meta_batch": 2, "outer_lr": 0.001},
    "evaluation": {"tasks": 10, "shots": [5], "lr_scales": [1.0]},
}

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5), st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix + (k,)
            yield from paths(v, prefix + (k,))


PATHS = list(paths(VALID))


@st.composite
def mutated(draw):
    data = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        node = data
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                break
            node = node[key]
        else:
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                node[path[-1]] = draw(JUNK)
            elif action == "delete":
                node.pop(path[-1], None)
            else:
                node[draw(st.text(min_size=1, max_size=6))] = draw(JUNK)
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_config_builds_or_names_a_field(data):
    try:
        parse_config(data, source="fuzz.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml: field '")
        top = exc.field.split(".")[0].split("[")[0]
        known = {f.name for f in dataclasses.fields(RunConfig)} | {"<root>"}
        # A real field, or the unknown key the user wrote (which may itself hold '.' or '[').
        written = any(exc.field == str(k) or exc.field.startswith((f"{k}.", f"{k}[")) for k in data)
        assert top in known or written, exc
        assert exc.detail
