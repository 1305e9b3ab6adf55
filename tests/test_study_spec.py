"""Study files and search spaces: validated fully before Ray starts, errors naming the file
and the field; define-by-run spaces; shipped studies and search spaces stay valid."""

from __future__ import annotations

import copy
import math
import sys
import types
from pathlib import Path

import optuna
import pytest
import yaml
from mutate import DELETE, mutate

from metatune.cli import main
from metatune.errors import ConfigError
from metatune.learners import LEARNERS
from metatune.study.search_space import parse_search_space
from metatune.study.spec import load_study, parse_study

ROOT = Path(__file__).resolve().parents[1]

GOOD = {
    "name": "good",
    "task": {"name": "sine", "protocol": "metasgd", "shots": 5},
    "learners": {"maml": {}, "metasgd": {"alpha_init": "constant"}},
    "search_space": {
        "params": {"inner_lr": {"low": 1e-3, "high": 1.0, "log": True}, "outer_lr": {}, "meta_batch": [2, 4]},
        "per_learner": {"metasgd": {"inner_lr": {"low": 1e-2, "high": 0.5, "log": True}}},
    },
    "trials": 3,
    "training": {"iterations": 20, "eval_every": 10},
    "evaluation": {"tasks": 10},
}


def _with(path: str, value):
    return mutate(GOOD, path, value)


_DELETE = DELETE
GRID = {"params": {"inner_lr": {"grid": [0.01, 0.1]}}}

BAD = [
    ("name", "bad name!", "name"),
    ("trails", 5, "trails"),
    ("task.name", "cosine", "task.name"),
    ("learners", ["maml", "nope"], "learners[1]"),
    ("learners", {"maml": {"inner_lr": -1.0}}, "learners.maml.inner_lr"),
    ("learners", {"maml": {"bogus": 1}}, "learners.maml.bogus"),
    ("learners", {"maml": {"inner_lr": 0.1}}, "learners.maml.inner_lr"),  # fixed and searched
    ("sampler", {"name": "annealing"}, "sampler.name"),
    ("sampler", {"name": "grid"}, "sampler.name"),  # ranges without grid values
    ("sampler", {"name": "cmaes"}, "sampler.name"),  # several learners = categorical
    ("scheduler", {"name": "asha", "grace_period": 50}, "scheduler.grace_period"),
    ("scheduler", {"name": "none", "max_t": 10}, "scheduler.max_t"),
    ("training.eval_every", 0, "training.eval_every"),
    ("training.iterations", "many", "training.iterations"),
    ("resources.gpus", 1.5, "resources.gpus"),
    ("resources.cpus", 0, "resources.cpus"),
    ("tracking.uri", "./mlruns", "tracking.uri"),
    ("table.rows", "colour", "table.rows"),
    ("table.published", "nature_2031", "table.published"),
    ("metric", "val_accuracy", "metric"),
    ("search_space", "search_spaces/missing.yaml", "search_space"),
    ("search_space.params.inner_lr", {"low": 1.0, "high": 0.1}, "search_space.params.inner_lr.high"),
    ("search_space.params.inner_lr", {"low": 0.0, "high": 0.1}, "search_space.params.inner_lr.low"),
    ("search_space.params.inner_lr", {"lo": 0.1}, "search_space.params.inner_lr.lo"),
    ("search_space.params.inner_lr", 0.01, "search_space.params.inner_lr"),
    ("search_space.params.bogus", {}, "search_space.params.bogus"),
    (
        "search_space.per_learner.maml",
        {"mask_temperature": {}},
        "search_space.per_learner.maml.mask_temperature",
    ),
    ("search_space.per_learner.nope", {}, "search_space.per_learner.nope"),
    (
        "search_space.params.outer_lr",
        {"low": 1e-4, "high": 1e-2, "log": True, "step": 1e-4},
        "search_space.params.outer_lr.step",
    ),
]


@pytest.mark.parametrize(("path", "value", "field"), BAD, ids=[f"{b[0]}={b[1]!r}"[:60] for b in BAD])
def test_bad_study_names_file_and_field(tmp_path, path, value, field):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(_with(path, value)))
    with pytest.raises(ConfigError) as err:
        load_study(f)
    assert err.value.field == field, str(err.value)
    assert err.value.source == str(f)
    assert str(f) in str(err.value) and field in str(err.value)


def test_grid_rules(tmp_path):
    def study(**changes):
        data = {k: v for k, v in copy.deepcopy(GOOD).items() if k != "trials"}
        data = {**data, "search_space": GRID, "sampler": {"name": "grid"}, **changes}
        return parse_study(data, source="grid.yaml", cwd=tmp_path)

    s = study()
    assert s.num_trials == 4 and s.table_rows == "inner_lr"
    with pytest.raises(ConfigError, match="trials"):
        study(trials=5)
    with pytest.raises(ConfigError) as err:
        study(search_space={**GRID, "per_learner": {"metasgd": {"inner_steps": {"grid": [1, 2]}}}})
    assert err.value.field == "sampler.name" and "only to metasgd" in str(err.value)
    with pytest.raises(ConfigError) as err:
        study(scheduler={"name": "asha"})
    assert err.value.field == "scheduler.name"


def test_search_space_file_errors_name_that_file(tmp_path):
    space = tmp_path / "search_spaces" / "s.yaml"
    space.parent.mkdir()
    study = tmp_path / "studies" / "s.yaml"
    study.parent.mkdir()
    study.write_text(yaml.safe_dump({**GOOD, "search_space": "search_spaces/s.yaml"}))
    space.write_text(yaml.safe_dump({"params": {"inner_lr": {"low": 2.0, "high": 1.0}}}))
    with pytest.raises(ConfigError) as err:
        load_study(study)
    assert err.value.source == str(space) and err.value.field == "params.inner_lr.high"
    space.write_text("params: {inner_lr: {low: 1e-3, high: [}\n")
    with pytest.raises(ConfigError) as err:
        load_study(study)
    assert err.value.source == str(space) and err.value.field == "<yaml>" and "line 1" in str(err.value)
    space.write_text(yaml.safe_dump({"params": {"inner_lr": {}}}))
    assert load_study(study).space.params[0].high == 10.0  # the declared search range


def test_cli_rejects_before_ray_starts(tmp_path, monkeypatch, capsys):
    """Exit 2 with one line naming file and field; the Ray adapter is never touched."""
    poisoned = types.ModuleType("metatune.study._ray")

    def boom(name):
        raise AssertionError(f"Ray adapter used before validation: {name}")

    poisoned.__getattr__ = boom  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "metatune.study._ray", poisoned)
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(_with("search_space.params.inner_lr", {"low": 1.0, "high": 0.1})))
    assert main(["run", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert str(f) in err[0] and "search_space.params.inner_lr.high" in err[0] and "Traceback" not in err[0]
    for cmd in (
        ["status", str(tmp_path / "nowhere")],
        ["resume", str(tmp_path / "nowhere")],
        ["export", str(tmp_path / "nowhere")],
        ["report", str(tmp_path / "nowhere")],
    ):
        assert main(cmd) == 2
    f.write_text("name: [unclosed\n")
    assert main(["run", str(f)]) == 2
    assert "YAML syntax error" in capsys.readouterr().err


def test_define_by_run_space_is_conditional_with_own_names(tmp_path):
    s = parse_study(GOOD, source="good.yaml", cwd=tmp_path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {}
    for _ in range(30):
        trial = study.ask()
        const = s.space(trial)
        assert const is None  # several learners: the learner is itself sampled
        seen.setdefault(trial.params["learner"], set()).update(trial.params)
        cfg = s.run_config_for(trial.params)
        assert cfg["learner"]["name"] == trial.params["learner"]
        assert cfg["training"]["outer_lr"] == trial.params["outer_lr"]
        assert cfg["training"]["meta_batch"] in (2, 4)
        if trial.params["learner"] == "metasgd":
            assert 1e-2 <= cfg["learner"]["inner_lr"] <= 0.5
            assert cfg["learner"]["alpha_init"] == "constant"  # the fixed override
        study.tell(trial, 1.0)
    assert seen["maml"] == {"learner", "inner_lr", "outer_lr", "meta_batch"}
    assert seen["metasgd"] == {"learner", "metasgd.inner_lr", "outer_lr", "meta_batch"}
    assert s.space.conditional


def test_grid_sampler_covers_the_grid(tmp_path):
    from metatune.study.strategies import make_sampler

    data = {**copy.deepcopy(GOOD), "search_space": GRID, "sampler": {"name": "grid"}}
    data.pop("trials")
    s = parse_study(data, source="g.yaml", cwd=tmp_path)
    study = optuna.create_study(sampler=make_sampler("grid", seed=0, space=s.space))
    points = set()
    for _ in range(s.num_trials):
        t = study.ask()
        s.space(t)
        points.add((t.params["learner"], t.params["inner_lr"]))
        t.set_user_attr("done", True)
        try:
            study.tell(t, 0.0)
        except RuntimeError:  # Optuna's GridSampler calls study.stop() outside optimize() when done
            pass
    assert points == {(lr, a) for lr in ("maml", "metasgd") for a in (0.01, 0.1)}


def test_single_learner_returns_learner_as_constant(tmp_path):
    data = {**copy.deepcopy(GOOD), "learners": ["maml"], "search_space": {"params": {"inner_lr": {}}}}
    s = parse_study(data, source="one.yaml", cwd=tmp_path)
    t = optuna.create_study().ask()
    assert s.space(t) == {"learner": "maml"} and set(t.params) == {"inner_lr"}


def test_frozen_study_round_trips(tmp_path):
    s = parse_study(GOOD, source="good.yaml", cwd=tmp_path)
    again = parse_study(s.frozen(), source="study.yaml")
    assert again.frozen() == s.frozen()
    assert again.dir == tmp_path / "metatune_results" / "good"
    assert again.tracking_uri == f"sqlite:///{tmp_path}/metatune_results/good/mlflow.db"


def test_gpu_fraction_caps_each_trial(tmp_path):
    data = {**copy.deepcopy(GOOD), "resources": {"cpus": 2, "gpus": 0.25}}
    s = parse_study(data, source="gpu.yaml", cwd=tmp_path)
    cfg = s.run_config_for({"learner": "maml", "inner_lr": 0.1, "outer_lr": 1e-3, "meta_batch": 2})
    assert cfg["device"] == "cuda" and cfg["gpu_memory_fraction"] == 0.25 and cfg["threads"] == 2


def _registered(data) -> bool:
    learners = data.get("learners") or []
    if isinstance(learners, dict):  # a variant names its learner inside
        return all((fixed or {}).get("learner", n) in LEARNERS for n, fixed in learners.items())
    return all(n in LEARNERS for n in learners)


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_are_valid(path):
    data = yaml.safe_load(path.read_text())
    if not _registered(data):
        pytest.skip(f"learners of {path.name} not registered yet")
    s = load_study(path)
    assert s.num_trials >= 1 and path.stem == s.name


def test_step_size_study_is_table_6_2():
    s = load_study(ROOT / "studies" / "mtnet_step_size.yaml")
    assert s.num_trials == 18 * 3 and set(s.learners) == {"maml", "tnet", "mtnet"}
    assert [p.choices for p in s.space.params] == [(1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)]
    assert s.space.seeds == (0, 1, 2)
    cfg = s.run_config_for({"learner": "mtnet", "inner_lr": 10.0, "seed": 2})
    assert cfg["training"]["iterations"] == 60000 and cfg["training"]["meta_batch"] == 4
    assert cfg["task"] == {"name": "sine", "protocol": "metasgd", "shots": 10} and cfg["seed"] == 2


def test_a_shipped_study_copied_anywhere_finds_its_search_space(tmp_path, monkeypatch):
    copy = tmp_path / "elsewhere" / "mine.yaml"
    copy.parent.mkdir()
    copy.write_text((ROOT / "studies" / "mtnet_step_size.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    s = load_study(copy)
    assert [p.choices for p in s.space.params] == [(1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)]
    # A file of the user's own beside the copy wins over the shipped one.
    (copy.parent / "search_spaces").mkdir()
    (copy.parent / "search_spaces" / "step_size_grid.yaml").write_text("params: {inner_lr: {grid: [0.5]}}\n")
    assert [p.choices for p in load_study(copy).space.params] == [(0.5,)]


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_search_spaces_are_valid(path):
    data = yaml.safe_load(path.read_text())
    learners = [n for n in data.get("learners") or ["maml"] if n in LEARNERS]
    if not learners:
        pytest.skip("learners not registered yet")
    space = parse_search_space(data, study_learners=learners, source=str(path))
    for p in space.params:
        assert p.kind == "categorical" or (p.low < p.high and not (p.log and p.low <= 0))
        assert not (isinstance(p.low, float) and math.isnan(p.low))


def test_a_setting_declared_not_searchable_is_refused_by_a_search_space():
    from metatune.learners.hparams import HyperParameter
    from metatune.study.search_space import _param

    fixed = HyperParameter("mode", "categorical", "a", choices=("a", "b"), searchable=False)
    with pytest.raises(ConfigError, match="'mode' is not searchable") as info:
        _param("mode", "mode", ["maml"], ["a", "b"], fixed, "params.mode")
    assert info.value.field == "params.mode"


def test_variants_of_one_learner_are_compared_side_by_side(tmp_path):
    s = parse_study(
        {
            "name": "variants",
            "task": {"name": "avg_threshold", "shots": 10},
            "model": {"name": "linear"},
            "learners": {
                "maml": {},
                "wormhole_tanh": {"learner": "wormhole", "wormhole_c_form": "tanh"},
                "wormhole_diagw": {"learner": "wormhole", "wormhole_c_form": "diag_weight"},
            },
            "search_space": {"params": {"inner_steps": {"grid": [1, 2]}}},
            "sampler": {"name": "grid"},
            "training": {"iterations": 20, "eval_every": 10},
            "storage": str(tmp_path / "v"),
        },
        source="v.yaml",
        cwd=tmp_path,
    )
    assert s.learners == ("maml", "wormhole_tanh", "wormhole_diagw") and s.num_trials == 6
    cfg = s.run_config_for({"learner": "wormhole_diagw", "inner_steps": 2})
    assert cfg["learner"] == {"name": "wormhole", "wormhole_c_form": "diag_weight", "inner_steps": 2}
    s.write_frozen()
    from metatune.study.spec import open_study

    again = open_study(s.dir)
    assert again.run_config_for({"learner": "wormhole_tanh", "inner_steps": 1})["learner"]["wormhole_c_form"] == "tanh"
    bad = {"name": "v", "task": {"name": "sine"}, "learners": {"x": {"learner": "nope"}}}
    with pytest.raises(ConfigError, match="learners.x.learner"):
        parse_study(bad, source="v.yaml", cwd=tmp_path)
    wrong = {"name": "v", "task": {"name": "sine"}, "learners": {"maml": {}, "w": {"learner": "wormhole", "mask_temperature": 1.0}}}
    with pytest.raises(ConfigError, match="learners.w.mask_temperature"):
        parse_study(wrong, source="v.yaml", cwd=tmp_path)
