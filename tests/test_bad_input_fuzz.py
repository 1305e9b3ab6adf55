"""Property tests: malformed study and search-space files, grown from the shipped ones, are
rejected by ``metatune run`` before Ray starts: exit code 2, exactly one stderr line naming the
wrong file and the dotted field, nothing on stdout, no traceback, no study folder.

Each generated file comes from a valid base (a shipped study, or a host study around a shipped
search space) with defects of one kind. A case with an expected field is invalid by
construction and must be rejected naming exactly that field; ``junk``, ``truncate`` (and a huge
value for an unbounded integer) may happen to stay valid, and then the run must get as far as
the poisoned Ray adapter. Example counts per property and kind are printed at the end of the
module (``pytest -s``) for the docs' "inputs fuzzed".
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import io
import itertools
import math
import os
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutate import set_path

import metatune.study
from metatune.cli import main
from metatune.config import TrainingConfig
from metatune.learners import LEARNERS
from metatune.study.spec import StudySpec, load_study, parse_study
from metatune.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_STUDIES = {p.stem: p for p in sorted((ROOT / "studies").glob("*.yaml"))}
SHIPPED_SPACES = {p.stem: p for p in sorted((ROOT / "search_spaces").glob("*.yaml"))}

#: Examples per property (about 300 in all); enough to hit every kind many times.
STUDY_EXAMPLES = 170
SPACE_EXAMPLES = 150

FUZZ = settings(
    max_examples=STUDY_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

#: property -> kind -> outcome -> examples run (printed at the end of the module).
COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


# ---------------------------------------------------------------------- bases
def _host_for(space: str) -> dict[str, Any]:
    """A valid study around a shipped search space: the shipped study that uses it, else the
    quickstart study with the space's own learners (on digits + conv4 where a learner needs
    batch norm)."""
    for path in SHIPPED_STUDIES.values():
        data = yaml.safe_load(path.read_text())
        if data.get("search_space") == f"search_spaces/{space}.yaml":
            return data
    data = yaml.safe_load(SHIPPED_STUDIES["quickstart"].read_text())
    learners = yaml.safe_load(SHIPPED_SPACES[space].read_text()).get("learners") or ["maml"]
    data.update(name=f"host_{space}", learners=list(learners), search_space=f"search_spaces/{space}.yaml")
    if any(LEARNERS.get(n).requires_batchnorm for n in learners):
        data.update(
            task={"name": "digits", "ways": 5, "shots": 1},
            model={"name": "conv4", "blocks": 2},
            evaluation={"tasks": 20, "shots": [1]},
        )
    return data


STUDY_BASES = {name: yaml.safe_load(p.read_text()) for name, p in SHIPPED_STUDIES.items()}
STUDY_TEXTS = {name: p.read_text() for name, p in SHIPPED_STUDIES.items()}
SPACE_BASES = {name: yaml.safe_load(p.read_text()) for name, p in SHIPPED_SPACES.items()}
SPACE_TEXTS = {name: p.read_text() for name, p in SHIPPED_SPACES.items()}
HOSTS = {name: _host_for(name) for name in SHIPPED_SPACES}


@dataclass(frozen=True)
class Target:
    """One parameter of a (valid) search space, as the file writes it."""

    path: tuple[str, ...]  # ("params", "inner_lr") or ("per_learner", "mtnet", "mask_temperature")
    knob: str
    learner: str  # a study learner that has it (for its declaration)
    kind: str  # float | int | categorical
    log: bool
    is_list: bool  # written as a list / {grid} / {choices}

    @property
    def field(self) -> str:
        return ".".join(self.path)


def _declared(learner: str) -> dict[str, Any]:
    return {**TrainingConfig.knobs(), **LEARNERS.get(learner).declared()}


def _targets(space: str) -> list[Target]:
    """The parameters a host study really searches (a branch of a learner the study does not
    compare is skipped by design, so a defect there is no defect)."""
    study = parse_study(HOSTS[space], source=str(ROOT / "studies" / "host.yaml"), cwd=ROOT)
    out = []
    for p in study.space.params:
        path = ("params", p.knob) if p.name == p.knob else ("per_learner", p.learners[0], p.knob)
        raw = SPACE_BASES[space]
        for key in path:
            raw = raw[key]
        is_list = isinstance(raw, list) or (isinstance(raw, dict) and bool({"grid", "choices"} & set(raw)))
        out.append(Target(path, p.knob, p.learners[0], p.kind, p.log, is_list))
    return out


TARGETS = {name: _targets(name) for name in SHIPPED_SPACES}


# ---------------------------------------------------------------------- value strategies
def _not_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return True
    return False


HUGE = st.integers(min_value=2**1024, max_value=10**400)  # beyond float range (~1.8e308)
LISTS = st.lists(st.integers(-3, 3), max_size=3)
DICTS = st.dictionaries(st.text(max_size=3), st.integers(-3, 3), max_size=2)
WORDS = st.text(max_size=8).filter(_not_float)
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=10)
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10), HUGE, st.floats(), st.text(max_size=6), LISTS, DICTS
)
#: Keys a user might mistype or paste: any text (control characters included), numbers, null.
KEYS = st.one_of(st.text(min_size=1, max_size=8), st.integers(-5, 5), st.booleans(), st.none())


def _split_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        optional = len(args) < len(get_args(tp))
        return (args[0] if len(args) == 1 else Union[tuple(args)]), optional  # noqa: UP007 -- built at run time
    return tp, False


def wrong_for(tp: Any) -> st.SearchStrategy:
    """Values that a field of type ``tp`` must refuse (by the type rules in design.md)."""
    inner, optional = _split_optional(tp)
    origin = get_origin(inner)
    options: list[st.SearchStrategy] = [] if optional else [st.none()]
    if dataclasses.is_dataclass(inner):
        options = [st.integers(), WORDS, LISTS]  # null means "all defaults" for a section
    elif inner is bool:
        options += [st.integers(), st.text(max_size=5), st.floats(allow_nan=False), LISTS]
    elif inner is int:
        options += [st.booleans(), st.floats(), st.text(max_size=5), LISTS, DICTS]
    elif inner is float:
        options += [st.booleans(), WORDS, LISTS, DICTS, st.sampled_from([math.nan, math.inf, -math.inf])]
    elif inner is str:
        options += [st.integers(), st.floats(), st.booleans(), LISTS, DICTS]
    elif origin is Literal:
        options += [st.text(max_size=8).filter(lambda s: s not in get_args(inner)), st.integers()]
    elif origin in (tuple, list):
        options += [st.integers(), WORDS, DICTS]
    elif origin is dict or inner is dict:
        options += [st.integers(), st.text(max_size=5), LISTS, st.booleans()]
    elif origin in (Union, types.UnionType):  # e.g. compile: bool | 'auto': wrong for every alternative
        alternatives = get_args(inner)
        numeric = any(a in (int, float) for a in alternatives)
        listy = any(get_origin(a) in (tuple, list) for a in alternatives)
        mapping = any(a is dict or get_origin(a) is dict or dataclasses.is_dataclass(a) for a in alternatives)
        options += [s for s, fits in ((st.integers(), numeric), (LISTS, listy), (DICTS, mapping)) if not fits]
        if not options:
            raise AssertionError(f"no wrong values for {tp!r}")
    else:
        raise AssertionError(f"no wrong values for {tp!r}")
    return st.one_of(options)


def _leaves(cls: type, prefix: str = "") -> list[tuple[str, Any]]:
    hints = get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or f"{prefix}{f.name}" in ("learners", "search_space"):
            continue
        tp = hints[f.name]
        out.append((f"{prefix}{f.name}", tp))
        inner, _ = _split_optional(tp)
        if dataclasses.is_dataclass(inner):
            out += _leaves(inner, f"{prefix}{f.name}.")
    return out


STUDY_LEAVES = _leaves(StudySpec)
SECTIONS = {
    path: _split_optional(tp)[0]
    for path, tp in STUDY_LEAVES
    if dataclasses.is_dataclass(_split_optional(tp)[0])
}

#: (path, values that must be refused, the field the error must name).
OUT_OF_RANGE: list[tuple[str, st.SearchStrategy, str]] = [
    ("trials", st.integers(-5, 0), "trials"),
    ("max_concurrent_trials", st.integers(-5, 0), "max_concurrent_trials"),
    ("max_failures", st.integers(-5, -1), "max_failures"),
    ("training.iterations", st.integers(-5, 0), "training.iterations"),
    ("training.meta_batch", st.integers(-5, 0), "training.meta_batch"),
    ("training.outer_lr", st.floats(-10, 0), "training.outer_lr"),
    ("training.grad_clip", st.floats(-10, 0), "training.grad_clip"),
    ("training.eval_every", st.integers(-5, 0), "training.eval_every"),
    ("training.val_tasks", st.integers(-5, 0), "training.val_tasks"),
    ("training.log_every", st.integers(-5, 0), "training.log_every"),
    ("evaluation.tasks", st.integers(-5, 1), "evaluation.tasks"),
    ("evaluation.chunk", st.integers(-5, 0), "evaluation.chunk"),
    ("evaluation.lr_scales", st.lists(st.floats(-5, 0), min_size=1, max_size=1), "evaluation.lr_scales[0]"),
    ("evaluation.shots", st.lists(st.integers(-5, 0), min_size=1, max_size=1), "evaluation.shots[0]"),
    ("resources.cpus", st.floats(-4, 0), "resources.cpus"),
    ("resources.gpus", st.floats(-4, -0.01), "resources.gpus"),
    ("resources.gpu_memory_fraction", st.floats(-1, 0) | st.floats(1.01, 9), "resources.gpu_memory_fraction"),
    ("scheduler.reduction_factor", st.floats(-3, 1), "scheduler.reduction_factor"),
    ("sampler.startup_trials", st.integers(-5, -1), "sampler.startup_trials"),
]


@dataclass(frozen=True)
class Text:
    """File content written as is (a YAML text with a defect), not dumped."""

    value: str


@dataclass
class Case:
    kind: str
    study: Any  # a mapping, YAML text or bytes
    space: Any = None  # (space cases) what the case's own search-space file holds
    bad_file: Literal["study", "space", "either"] = "study"
    field: str | None = None  # the field the error must name; None: any (maybe-valid kinds)

    @property
    def must_fail(self) -> bool:
        return self.field is not None


def _dict_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out += _dict_paths(v, prefix + (k,))
    return out


def _learner_map(data: dict) -> dict[str, dict]:
    raw = data["learners"]
    return {n: {} for n in raw} if isinstance(raw, list) else {k: dict(v or {}) for k, v in raw.items()}


def _registered(label: str, settings: dict) -> str:
    """The registered learner behind a study's entry: a variant (``label: {learner: NAME}``)
    names it, a plain entry is its own name."""
    return settings.get("learner", label)


def _roundtrips(value: Any) -> bool:
    """Whether the YAML dumper writes ``value`` (as a key and as a value) so that it reads back
    the same (PyYAML folds a raw NEL inside quotes to a space, for one)."""
    data = {value: 1, "k": value}
    return yaml.safe_load(yaml.safe_dump(data, allow_unicode=True)) == data


# ---------------------------------------------------------------------- text-level defects
def _content_lines(text: str) -> list[int]:
    lines = text.splitlines()
    return [i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")]


def _insert_tab(draw: Any, text: str) -> Text:
    lines = text.splitlines()
    i = draw(st.sampled_from(_content_lines(text)))
    lines[i] = "\t" + lines[i]
    return Text("\n".join(lines) + "\n")


def _open_bracket(draw: Any, text: str) -> Text:
    lines = text.splitlines()
    keyed = [i for i in _content_lines(text) if re.match(r"^[A-Za-z_]+: \S", lines[i])]
    i = draw(st.sampled_from(keyed))
    key, value = lines[i].split(": ", 1)
    lines[i] = f"{key}: [{value}"
    return Text("\n".join(lines) + "\n")


def _alias_bomb(levels: int = 9) -> str:
    """A one-line "billion laughs": each anchor lists the previous one 9 times (9^9 values)."""
    parts = ["&l0 [" + ", ".join(["lol"] * 9) + "]"]
    parts += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


#: Values that PyYAML's safe constructors cannot build (or refuse), nesting deeper than its
#: recursive composer goes, and aliases that expand beyond any config (or into themselves).
BAD_SCALARS = [
    "2020-13-45", "2021-02-30 25:61:00", "!!int abc", "!!float abc", "!!timestamp x", "9" * 5000,
    "!!python/object/apply:os.getpid []", "!!python/name:os.getpid", "*undefined",
    "[" * 3000 + "]" * 3000, _alias_bomb(), "&self [*self]",
]  # fmt: skip


def _bad_scalar(draw: Any, text: str) -> Text:
    lines = text.splitlines()
    keyed = [i for i in _content_lines(text) if re.match(r"^[A-Za-z_]+: \S", lines[i])]
    i = draw(st.sampled_from(keyed))
    lines[i] = f"{lines[i].split(': ', 1)[0]}: {draw(st.sampled_from(BAD_SCALARS))}"
    return Text("\n".join(lines) + "\n")


def _truncate(draw: Any, text: str) -> Text:
    return Text(text[: draw(st.integers(0, len(text) - 1))])


def _binary(draw: Any) -> bytes:
    # A byte that is never valid UTF-8 first, then anything.
    return bytes([draw(st.sampled_from([0x80, 0xC0, 0xFE, 0xFF]))]) + draw(st.binary(max_size=40))


def _junk(draw: Any, data: dict) -> dict:
    for _ in range(draw(st.integers(1, 3))):
        paths = _dict_paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        node = data
        for key in path[:-1]:
            node = node[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            node[path[-1]] = draw(JUNK)
        elif action == "delete":
            del node[path[-1]]
        else:
            node[draw(KEYS)] = draw(JUNK)
    return data


# ---------------------------------------------------------------------- study cases
STUDY_KINDS = [
    "wrong_type", "out_of_range", "unknown_key", "delete_required", "unknown_learner",
    "unknown_hparam", "bad_rate", "unknown_sampler", "unknown_scheduler", "sampler_combo",
    "missing_space_file", "eval_every", "huge", "bad_name", "not_mapping", "yaml_tab", "yaml_bracket",
    "yaml_scalar", "binary", "junk", "truncate",
]  # fmt: skip
FLOAT_LEAVES = [path for path, tp in STUDY_LEAVES if _split_optional(tp)[0] is float]


@st.composite
def study_cases(draw: Any) -> Case:
    base = draw(st.sampled_from(sorted(STUDY_BASES)))
    data = copy.deepcopy(STUDY_BASES[base])
    text = STUDY_TEXTS[base]
    kind = draw(st.sampled_from(STUDY_KINDS))
    if kind == "wrong_type":
        path, tp = draw(st.sampled_from(STUDY_LEAVES))
        return Case(kind, set_path(data, path, draw(wrong_for(tp))), field=path)
    if kind == "out_of_range":
        path, values, field = draw(st.sampled_from(OUT_OF_RANGE))
        return Case(kind, set_path(data, path, draw(values)), field=field)
    if kind == "unknown_key":
        section = draw(st.sampled_from(["", "task", *SECTIONS]))
        if section == "":
            known = {f.name for f in dataclasses.fields(StudySpec)}
        elif section == "task":
            known = {f.name for f in dataclasses.fields(TASKS.get(data["task"]["name"]))} | {"name"}
        else:
            known = {f.name for f in dataclasses.fields(SECTIONS[section])}
        key = draw(KEYS.filter(lambda k: k not in known and _roundtrips(k)))
        if section == "":
            data[key] = draw(JUNK)
        else:
            node = data.get(section) if isinstance(data.get(section), dict) else {}
            node[key] = draw(JUNK)
            data[section] = node
        return Case(kind, data, field=f"{section}.{key}" if section else str(key))
    if kind == "delete_required":
        path = draw(st.sampled_from(["name", "task", "learners", "task.name"]))
        node = data
        *parents, last = path.split(".")
        for k in parents:
            node = node[k]
        del node[last]
        return Case(kind, data, field=path)
    if kind == "unknown_learner":
        name = draw(st.text(min_size=1, max_size=10).filter(lambda s: s not in LEARNERS and _roundtrips(s)))
        if isinstance(data["learners"], list):
            i = draw(st.integers(0, len(data["learners"]) - 1))
            data["learners"][i] = name
            return Case(kind, data, field=f"learners[{i}]")
        data["learners"][name] = {}
        return Case(kind, data, field=f"learners.{name}")
    if kind == "unknown_hparam":
        learners = _learner_map(data)
        learner = draw(st.sampled_from(sorted(learners)))
        declared = {*LEARNERS.get(_registered(learner, learners[learner])).declared(), "learner"}
        key = draw(KEYS.filter(lambda k: k not in declared and _roundtrips(k)))
        learners[learner][key] = draw(JUNK)
        data["learners"] = learners
        return Case(kind, data, field=f"learners.{learner}.{key}")
    if kind == "bad_rate":
        learners = _learner_map(data)
        learner = draw(st.sampled_from(sorted(learners)))
        cls = LEARNERS.get(_registered(learner, learners[learner]))
        rates = [h for h in cls.hyperparameters if h.kind == "float" and h.low is not None]
        h = draw(st.sampled_from(rates))
        edge = [h.low] if h.low_open else []
        value = draw(st.one_of(st.sampled_from(edge or [h.low - 1]), st.floats(h.low - 100, h.low - 1e-6)))
        learners[learner][h.name] = value
        data["learners"] = learners
        return Case(kind, data, field=f"learners.{learner}.{h.name}")
    if kind == "unknown_sampler":
        name = draw(st.text(max_size=8).filter(lambda s: s not in ("tpe", "cmaes", "gp", "random", "grid")))
        data["sampler"] = {**(data.get("sampler") or {}), "name": name}
        return Case(kind, data, field="sampler.name")
    if kind == "unknown_scheduler":
        name = draw(st.text(max_size=8).filter(lambda s: s not in ("none", "asha")))
        data["scheduler"] = {"name": name}
        return Case(kind, data, field="scheduler.name")
    if kind == "sampler_combo":
        if (data.get("sampler") or {}).get("name") == "grid":
            # A grid study: ASHA would leave holes; CMA-ES cannot sample learner x grid.
            if draw(st.booleans()):
                data["scheduler"] = {"name": "asha"}
                return Case(kind, data, field="scheduler.name")
            data["sampler"] = {"name": "cmaes"}
            # With replicates the seed axis is what needs the grid, and the error says so there.
            replicated = next((k for k in ("replicates", "seeds") if data.get(k)), None)
            return Case(kind, data, field=replicated or "sampler.name")
        data["sampler"] = {"name": "grid"}  # ranges cannot be a grid
        return Case(kind, data, field="sampler.name")
    if kind == "missing_space_file":
        data["search_space"] = f"search_spaces/{draw(NAMES)}_missing.yaml"
        return Case(kind, data, field="search_space")
    if kind == "eval_every":
        tr = data["training"]
        tr["eval_every"] = tr["iterations"] + draw(st.integers(1, 1000))
        return Case(kind, data, field="training.eval_every")
    if kind == "huge":
        # Integers beyond float range: refused by every float field (float() would overflow);
        # an int hyperparameter may take one if it has no upper bound.
        value = draw(HUGE) * draw(st.sampled_from([1, -1]))
        if draw(st.booleans()):
            path = draw(st.sampled_from(FLOAT_LEAVES))
            return Case(kind, set_path(data, path, value), field=path)
        learners = _learner_map(data)
        learner = draw(st.sampled_from(sorted(learners)))
        cls = LEARNERS.get(_registered(learner, learners[learner]))
        numeric = [h for h in cls.hyperparameters if h.kind in ("int", "float")]
        h = draw(st.sampled_from(numeric))
        learners[learner][h.name] = value
        data["learners"] = learners
        must = h.kind == "float" or h.high is not None or value < 0
        return Case(kind, data, field=f"learners.{learner}.{h.name}" if must else None)
    if kind == "bad_name":
        # The name becomes a folder name: letters, digits, '_', '-', '.' only (design.md), and
        # no trailing newline (which a regex '$' lets through).
        bad = st.one_of(
            NAMES.map(lambda s: s + "\n"),
            st.text(max_size=8).filter(lambda s: not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", s)),
        )
        return Case(kind, set_path(data, "name", draw(bad.filter(_roundtrips))), field="name")
    if kind == "not_mapping":
        return Case(kind, draw(st.one_of(LISTS, st.integers(), WORDS, st.just(None))), field="<root>")
    if kind == "yaml_scalar":
        return Case(kind, _bad_scalar(draw, text), field="<yaml>")
    if kind == "yaml_tab":
        return Case(kind, _insert_tab(draw, text), field="<yaml>")
    if kind == "yaml_bracket":
        return Case(kind, _open_bracket(draw, text), field="<yaml>")
    if kind == "binary":
        return Case(kind, _binary(draw), field="<file>")
    if kind == "junk":
        return Case(kind, _junk(draw, data), bad_file="either")
    assert kind == "truncate"
    return Case(kind, _truncate(draw, text), bad_file="either")


# ---------------------------------------------------------------------- search-space cases
SPACE_KINDS = [
    "inverted", "log_low", "unknown_knob", "unknown_branch_knob", "unknown_branch", "unknown_key",
    "body_key", "body_type", "bound_type", "step_with_log", "bad_step", "bad_value", "empty_values",
    "mixed", "duplicate", "unknown_space_learner", "huge", "not_mapping", "yaml_tab",
    "yaml_bracket", "yaml_scalar", "binary", "junk", "truncate",
]  # fmt: skip
RANGE_KINDS = ("inverted", "log_low", "step_with_log", "bad_step", "body_key", "bound_type", "huge")
ALL_KNOBS = set(TrainingConfig.knobs()).union(*(LEARNERS.get(n).declared() for n in LEARNERS))


def _body(space: dict, t: Target) -> Any:
    node = space
    for key in t.path:
        node = node[key]
    return node


def _as_mapping(space: dict, t: Target) -> dict:
    """The target's body as a mapping in the file (a list becomes {choices: [...]})."""
    body = _body(space, t)
    if isinstance(body, list):
        body = {"choices": body}
    body = dict(body or {})
    set_path(space, t.path, body)
    return body


def _invalid_value(draw: Any, decl: Any) -> Any:
    """A value the declaration refuses (out of bounds, wrong type, not a choice)."""
    if decl.kind == "categorical":
        return draw(st.one_of(st.text(max_size=6), st.integers()).filter(lambda v: v not in decl.choices))
    if decl.kind == "bool":
        return draw(st.one_of(st.integers(), WORDS))
    options = [WORDS.filter(lambda s: s != ""), st.booleans(), LISTS]
    if decl.low is not None:
        options.append(st.just(decl.low) if decl.low_open else st.just(decl.low - 1))
    return draw(st.one_of(options))


@st.composite
def space_cases(draw: Any) -> Case:
    name = draw(st.sampled_from(sorted(SHIPPED_SPACES)))
    host = copy.deepcopy(HOSTS[name])
    space = copy.deepcopy(SPACE_BASES[name])
    text = SPACE_TEXTS[name]
    targets = TARGETS[name]
    ranges = [t for t in targets if not t.is_list and t.kind != "categorical"]
    lists = [t for t in targets if t.is_list]
    kinds = [
        k for k in SPACE_KINDS
        if not (k in RANGE_KINDS and not ranges)
        and not (k in ("bad_value", "empty_values", "mixed", "duplicate") and not lists)
        and not (k == "log_low" and not any(t.log for t in ranges))
        and not (k == "step_with_log" and not any(t.log for t in ranges))
        and not (k == "bad_step" and not any(not t.log for t in ranges))
        and not (k == "unknown_branch_knob" and not space.get("per_learner"))
    ]  # fmt: skip
    kind = draw(st.sampled_from(kinds))

    def case(field: str | None, content: Any = None, bad_file: str = "space") -> Case:
        content = space if content is None else content
        return Case(kind, host, content, bad_file, field)  # type: ignore[arg-type]

    if kind == "inverted":
        t = draw(st.sampled_from(ranges))
        decl = _declared(t.learner)[t.knob]
        body = _as_mapping(space, t)
        low, high = body.get("low", decl.search[0]), body.get("high", decl.search[1])
        body["low"], body["high"] = (high, low) if draw(st.booleans()) else (low, low)
        return case(f"{t.field}.high")
    if kind == "log_low":
        t = draw(st.sampled_from([t for t in ranges if t.log]))
        _as_mapping(space, t)["low"] = draw(st.one_of(st.just(0), st.floats(-10, 0)))
        return case(f"{t.field}.low")
    if kind == "unknown_knob":
        key = draw(KEYS.filter(lambda k: k not in ALL_KNOBS and _roundtrips(k)))
        space.setdefault("params", {})[key] = draw(st.one_of(st.just({}), JUNK))
        return case(f"params.{key}")
    if kind == "unknown_branch_knob":
        learner = draw(st.sampled_from(sorted(n for n in space["per_learner"] if n in host["learners"])))
        key = draw(KEYS.filter(lambda k: k not in _declared(learner) and _roundtrips(k)))
        space["per_learner"][learner][key] = draw(st.one_of(st.just({}), JUNK))
        return case(f"per_learner.{learner}.{key}")
    if kind == "unknown_branch":
        learner = draw(st.text(min_size=1, max_size=8).filter(lambda s: s not in LEARNERS and _roundtrips(s)))
        space["per_learner"] = {learner: {}, **(space.get("per_learner") or {})}
        return case(f"per_learner.{learner}")
    if kind == "unknown_key":
        known = ("description", "learners", "params", "per_learner")
        key = draw(KEYS.filter(lambda k: k not in known and _roundtrips(k)))
        space[key] = draw(JUNK)
        return case(str(key))
    if kind == "body_key":
        t = draw(st.sampled_from(ranges))
        known = ("low", "high", "log", "step", "choices", "grid")
        key = draw(KEYS.filter(lambda k: k not in known and _roundtrips(k)))
        _as_mapping(space, t)[key] = draw(JUNK)
        return case(f"{t.field}.{key}")
    if kind == "body_type":
        t = draw(st.sampled_from(targets))
        set_path(space, t.path, draw(st.one_of(st.integers(), st.floats(), st.booleans(), st.text(max_size=6))))
        return case(t.field)
    if kind == "bound_type":
        t = draw(st.sampled_from(ranges))
        key = draw(st.sampled_from(["low", "high", "log", "step"]))
        bad = wrong_for(bool if key == "log" else float | None)
        _as_mapping(space, t)[key] = draw(bad.filter(lambda v: v is not None))
        return case(f"{t.field}.{key}")
    if kind == "step_with_log":
        t = draw(st.sampled_from([t for t in ranges if t.log]))
        _as_mapping(space, t)["step"] = draw(st.floats(0.001, 1))
        return case(f"{t.field}.step")
    if kind == "bad_step":
        t = draw(st.sampled_from([t for t in ranges if not t.log]))
        _as_mapping(space, t)["step"] = draw(st.floats(-5, 0))
        return case(f"{t.field}.step")
    if kind == "bad_value":
        t = draw(st.sampled_from(lists))
        body = _as_mapping(space, t)
        key = "grid" if "grid" in body else "choices"
        values = list(body[key])
        i = draw(st.integers(0, len(values) - 1))
        values[i] = _invalid_value(draw, _declared(t.learner)[t.knob])
        body[key] = values
        return case(f"{t.field}.{key}[{i}]")
    if kind == "empty_values":
        t = draw(st.sampled_from(lists))
        body = _as_mapping(space, t)
        key = "grid" if "grid" in body else "choices"
        body[key] = []
        return case(f"{t.field}.{key}")
    if kind == "mixed":
        t = draw(st.sampled_from(lists))
        _as_mapping(space, t)["low"] = draw(st.floats(0.001, 1))
        return case(f"{t.field}.low")
    if kind == "duplicate":
        t = draw(st.sampled_from(lists))
        body = _as_mapping(space, t)
        key = "grid" if "grid" in body else "choices"
        body[key] = list(body[key]) + [draw(st.sampled_from(list(body[key])))]
        return case(t.field)
    if kind == "unknown_space_learner":
        learners = list(space.get("learners") or host["learners"])
        i = draw(st.integers(0, len(learners)))
        learners.insert(i, draw(NAMES.filter(lambda s: s not in LEARNERS)))
        space["learners"] = learners
        return case(f"learners[{i}]")
    if kind == "huge":
        t = draw(st.sampled_from(ranges))
        key = draw(st.sampled_from(["low", "high"]))
        _as_mapping(space, t)[key] = draw(HUGE) * draw(st.sampled_from([1, -1]))
        return case(f"{t.field}.{key}")
    if kind == "not_mapping":
        return case("<root>", draw(st.one_of(LISTS, st.integers(), WORDS)))
    if kind == "yaml_scalar":
        return case("<yaml>", _bad_scalar(draw, text))
    if kind == "yaml_tab":
        return case("<yaml>", _insert_tab(draw, text))
    if kind == "yaml_bracket":
        return case("<yaml>", _open_bracket(draw, text))
    if kind == "binary":
        return case("<file>", _binary(draw))
    if kind == "junk":
        return case(None, _junk(draw, space), "either")
    assert kind == "truncate"
    return case(None, _truncate(draw, text), "either")


# ---------------------------------------------------------------------- running the CLI
class RayReached(Exception):
    """The poisoned Ray adapter was used: validation let the study through."""


@contextlib.contextmanager
def poisoned_ray():
    """Any use of metatune.study._ray raises RayReached (as in test_study_spec, plus the package
    attribute, which ``from metatune.study import _ray`` would find first once imported)."""
    poisoned = types.ModuleType("metatune.study._ray")

    def boom(name: str) -> Any:
        raise RayReached(name)

    poisoned.__getattr__ = boom  # type: ignore[attr-defined]
    mp = pytest.MonkeyPatch()
    mp.setitem(sys.modules, "metatune.study._ray", poisoned)
    mp.setattr(metatune.study, "_ray", poisoned, raising=False)
    try:
        yield
    finally:
        mp.undo()


def shown(field: str) -> str:
    """How an error line shows a field: non-printable characters as Python escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in field)


def _write(path: Path, content: Any) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, Text):
        path.write_text(content.value)
    else:
        path.write_text(yaml.safe_dump(content, sort_keys=False, allow_unicode=True))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("fuzz").resolve()
    (ws / "search_spaces").mkdir()
    (ws / "studies").mkdir()
    for path in SHIPPED_SPACES.values():
        (ws / "search_spaces" / path.name).write_text(path.read_text())
    return ws


_NUMBER = itertools.count()


def check_case(case: Case, ws: Path, prop: str) -> None:
    n = next(_NUMBER)
    study_data = case.study
    space_path = None
    if case.space is not None:
        space_path = ws / "search_spaces" / f"case{n}.yaml"
        _write(space_path, case.space)
        study_data = {**study_data, "search_space": f"search_spaces/{space_path.name}"}
    study_path = ws / "studies" / f"case{n}.yaml"
    _write(study_path, study_data)
    storage = ws / "storage" / f"case{n}"
    out, err = io.StringIO(), io.StringIO()
    reached = False
    with poisoned_ray(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["run", str(study_path), "--storage", str(storage), "--no-mlflow"])
        except RayReached:
            reached, rc = True, None
    stdout, stderr = out.getvalue(), err.getvalue()
    COUNTS[prop][(case.kind, "reached Ray" if reached else "rejected")] += 1
    assert "Traceback" not in stdout + stderr
    if reached:
        assert not case.must_fail, f"{case.kind}: an invalid file reached Ray: {study_data!r}"
        return
    lines = stderr.splitlines()
    assert rc == 2, (rc, stderr)
    assert len(lines) == 1, f"{case.kind}: expected one line, got:\n{stderr}"
    assert stdout == "", stdout
    assert not storage.exists(), "the study folder was created before validation ended"
    files = {"study": [study_path], "space": [space_path], "either": [study_path, space_path]}[case.bad_file]
    prefixes = [f"metatune: error: {f}: field '" for f in files if f is not None]
    assert any(lines[0].startswith(p) for p in prefixes), f"{case.kind}: wrong file in {lines[0]!r}"
    if case.field is not None:
        want = f"field '{shown(case.field)}': "
        assert want in lines[0], f"{case.kind}: expected {want!r} in {lines[0]!r}"
    assert re.search(r"field '.*': \S", lines[0]), lines[0]


def test_hosts_and_bases_are_valid():
    """The premise of 'invalid by construction': every base is valid as shipped."""
    for path in SHIPPED_STUDIES.values():
        load_study(path)
    for name, host in HOSTS.items():
        assert TARGETS[name], name
        parse_study(host, source=str(ROOT / "studies" / "host.yaml"), cwd=ROOT)


@FUZZ
@given(case=study_cases())
def test_malformed_study_is_rejected_before_ray(workspace, case):
    check_case(case, workspace, "study")


@settings(FUZZ, max_examples=SPACE_EXAMPLES)
@given(case=space_cases())
def test_malformed_search_space_is_rejected_before_ray(workspace, case):
    check_case(case, workspace, "search space")


@pytest.fixture(scope="module", autouse=True)
def _print_counts():
    yield
    if not COUNTS:
        return
    print("\n\ninputs fuzzed (property: kind -> rejected / reached Ray):")
    for prop, counts in COUNTS.items():
        total = sum(counts.values())
        print(f"  {prop}: {total} examples")
        kinds = sorted({k for k, _ in counts})
        for k in kinds:
            rej, ok = counts[(k, "rejected")], counts[(k, "reached Ray")]
            print(f"    {k:24s} {rej:4d} rejected" + (f", {ok} reached Ray (valid after all)" if ok else ""))


# ---------------------------------------------------------------------- the real process
#: A stand-in ``ray`` package first on PYTHONPATH: importing it leaves a marker file and fails.
SHADOW_RAY = """import os, pathlib
pathlib.Path(os.environ["METATUNE_TEST_RAY_MARKER"]).write_text("ray imported")
raise ImportError("ray imported before the study was validated")
"""


def _cli(tmp: Path, study: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """``metatune run STUDY`` in a real process with the stand-in ray; (process, study folder,
    marker written if anything imported ray)."""
    shadow = tmp / "shadow"
    (shadow / "ray").mkdir(parents=True, exist_ok=True)
    (shadow / "ray" / "__init__.py").write_text(SHADOW_RAY)
    marker, storage = tmp / "RAY_IMPORTED", tmp / "storage"
    script = Path(sys.executable).with_name("metatune")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "metatune.cli"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")])),
        "METATUNE_TEST_RAY_MARKER": str(marker),
        "RAY_TMPDIR": str(tmp / "ray_tmp"),  # a Ray session would leave its folder here
    }
    proc = subprocess.run(
        [*cmd, "run", str(study), "--storage", str(storage), *extra],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp,
        env=env,
    )
    return proc, storage, marker


def _study_dir(tmp: Path) -> Path:
    (tmp / "studies").mkdir()
    (tmp / "search_spaces").mkdir()
    for path in SHIPPED_SPACES.values():
        (tmp / "search_spaces" / path.name).write_text(path.read_text())
    return tmp / "studies"


QUICKSTART = STUDY_BASES["quickstart"]
SUBPROCESS_CASES = {
    # name: (study file content, space file content or None, file the error names, field)
    "inline_inverted_range": (
        {**QUICKSTART, "search_space": {"params": {"inner_lr": {"low": 1.0, "high": 1e-3, "log": True}}}},
        None,
        "study",
        "search_space.params.inner_lr.high",
    ),
    "space_file_with_tab": (
        {**QUICKSTART, "search_space": "search_spaces/tabbed.yaml"},
        Text("params:\n\tinner_lr: {low: 1.0e-3, high: 1.0}\n"),
        "space",
        "<yaml>",
    ),
    "binary_study_file": (b"\xff\xfe\x00\x01 not yaml at all \x80", None, "study", "<file>"),
    "missing_space_file": (
        {**QUICKSTART, "search_space": "search_spaces/nowhere.yaml"},
        None,
        "study",
        "search_space",
    ),
    "newline_in_unknown_key": ({**QUICKSTART, "trials\nmax": 3}, None, "study", "trials\nmax"),
}


@pytest.mark.parametrize("name", sorted(SUBPROCESS_CASES))
def test_cli_process_rejects_without_ray(tmp_path, name):
    study_content, space_content, bad, field = SUBPROCESS_CASES[name]
    studies = _study_dir(tmp_path)
    study = studies / "bad.yaml"
    _write(study, study_content)
    space = tmp_path / "search_spaces" / "tabbed.yaml"
    if space_content is not None:
        _write(space, space_content)
    proc, storage, marker = _cli(tmp_path, study)
    output = proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, output
    assert len(lines) == 1 and proc.stdout == "", output
    assert "Traceback" not in output and not re.search(r"\bray\b", output, re.IGNORECASE), output
    where = study if bad == "study" else space.resolve()
    assert lines[0].startswith(f"metatune: error: {where}: field '{shown(field)}': "), lines[0]
    assert not marker.exists(), "ray was imported"
    assert not storage.exists() and not (tmp_path / "metatune_results").exists()
    assert not (tmp_path / "ray_tmp").exists()


def test_cli_process_ray_detector_works(tmp_path):
    """Control: a valid study does import ray (the stand-in fails it), so the marker above
    would have caught a Ray start."""
    study = _study_dir(tmp_path) / "ok.yaml"
    _write(study, {**QUICKSTART, "trials": 1})
    proc, storage, marker = _cli(tmp_path, study, "--no-mlflow")
    assert proc.returncode != 0 and marker.exists(), proc.stdout + proc.stderr
    assert (storage / "study.yaml").is_file()  # validation passed and the study was frozen
