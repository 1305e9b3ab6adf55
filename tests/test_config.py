"""Bad configs end with one clear message naming the file and the field, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
from mutate import DELETE, mutate

from metatune.cli import main
from metatune.config import parse_config
from metatune.errors import ConfigError

GOOD = {
    "task": {"name": "sine"},
    "learner": {"name": "maml", "inner_lr": 0.01},
    "training": {"iterations": 2, "meta_batch": 2},
}


def with_(path: tuple[str, ...], value, base=GOOD):
    return mutate(base, path, DELETE if value is KeyError else value)


@pytest.mark.parametrize(
    "path, value, field, words",
    [
        (("learner", "name"), "reptile", "learner.name", "unknown learner 'reptile'"),
        (("task", "name"), "cifar", "task.name", "unknown task 'cifar'"),
        (("learner", "inner_lr"), -0.1, "learner.inner_lr", "expected a value > 0"),
        (("learner", "inner_lr"), "fast", "learner.inner_lr", "expected a number"),
        (("training", "outer_lr"), -1e-3, "training.outer_lr", "positive"),
        (("training", "meta_batch"), 2.5, "training.meta_batch", "integer"),
        (("learner", "inner_steps"), 0, "learner.inner_steps", ">= 1"),
        (("learner", "first_order"), "False", "learner.first_order", "true or false"),
        (("learner", "momentum"), 0.9, "learner.momentum", "unknown hyperparameter"),
        (("training", "epochs"), 3, "training.epochs", "unknown field"),
        (("task", "protocol"), "finn", "task.protocol", "one of 'maml', 'metasgd'"),
        (("task",), KeyError, "task", "missing"),
        (("learner",), KeyError, "learner", "missing"),
        (("model",), {"name": "resnet"}, "model.name", "unknown backbone"),
        (("evaluation", "tasks"), 1, "evaluation.tasks", "at least 2"),
        (("dtype",), "float16", "dtype", "one of"),
    ],
)
def test_bad_field_is_named(path, value, field, words):
    with pytest.raises(ConfigError) as info:
        parse_config(with_(path, value), source="cfg.yaml")
    assert info.value.field == field
    msg = str(info.value)
    assert msg.startswith(f"cfg.yaml: field '{field}'")
    assert words in msg


def test_good_config_builds():
    comp = parse_config(GOOD)
    assert comp.learner.hparams["inner_lr"] == 0.01
    assert comp.backbone.name == "mlp"
    assert comp.config.training.iterations == 2


def test_numeric_strings_from_yaml_are_numbers():
    # YAML 1.1 reads 1e-3 (no dot) as a string; users expect a number.
    comp = parse_config(yaml.safe_load("task: {name: sine}\nlearner: {name: maml, inner_lr: 1e-3}\ntraining: {outer_lr: 1e-3}\n"))
    assert comp.learner.hparams["inner_lr"] == 1e-3 and comp.config.training.outer_lr == 1e-3


def _cli(tmp_path, text: str, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code = main(["train", str(path), "--no-progress", "--output", str(tmp_path / "out")])
    return code, capsys.readouterr().err, path


def test_cli_bad_value_exit_2_one_line(tmp_path, capsys):
    code, err, path = _cli(tmp_path, yaml.safe_dump(with_(("learner", "inner_lr"), -1)), capsys)
    assert code == 2
    assert err.strip().count("\n") == 0
    assert str(path) in err and "learner.inner_lr" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_without_cuda_is_one_line(tmp_path, capsys):
    code, err, path = _cli(tmp_path, yaml.safe_dump({**with_(("training", "iterations"), 2), "device": "cuda"}), capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "Traceback" not in err
    assert str(path) in err and "field 'device'" in err and "CUDA is not available" in err


def test_cli_yaml_syntax_error(tmp_path, capsys):
    code, err, path = _cli(tmp_path, "task: {name: sine\nlearner: [", capsys)
    assert code == 2 and "YAML syntax error" in err and str(path) in err


def test_cli_missing_file(tmp_path, capsys):
    code = main(["train", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "file not found" in err


def test_cli_subprocess_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(with_(("learner", "name"), "reptile")))
    proc = subprocess.run([sys.executable, "-m", "metatune.cli", "train", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "learner.name" in proc.stderr and "maml" in proc.stderr


def test_learner_settings_are_one_frozen_typed_config():
    from metatune.learners import LearnerConfig
    from metatune.learners.mtnet import FullMaskConfig

    comp = parse_config(with_(("learner",), {"name": "mtnet_full", "inner_steps": 3.0, "mask_temperature": "2"}))
    config = comp.learner.config
    assert isinstance(config, FullMaskConfig) and isinstance(config, LearnerConfig)
    assert config.inner_steps == 3 and type(config.inner_steps) is int
    assert config.mask_temperature == 2.0 and config.mask_resample == "per_step"
    assert dict(comp.learner.hparams) == config.values()
    with pytest.raises(ValueError):
        config.inner_lr = 1.0  # frozen
    with pytest.raises(TypeError):  # a config or keyword settings, not both
        type(comp.learner)(backbone=comp.backbone, task=comp.task, config=config, inner_lr=0.1)
    rows = {h.name: h for h in type(comp.learner).hyperparameters}
    assert rows["mask_temperature"].low == 0.0 and rows["mask_temperature"].low_open and rows["mask_temperature"].log


def test_a_learner_declaring_hyperparameter_rows_still_works():
    """A plugin written before config classes (``hyperparameters = (*COMMON, HyperParameter(...))``)
    gets a config class made from its rows: same validation, same table rows."""
    from metatune.learners import COMMON, MAML, HyperParameter

    row = HyperParameter("decay", "float", 0.5, symbol="d", low=0.0, low_open=True, high=1.0, search=(0.1, 0.9))
    mode = HyperParameter("mode", "categorical", "a", choices=("a", "b"))
    with pytest.warns(DeprecationWarning, match="config_class"):
        class OldStyle(MAML):
            hyperparameters = (*COMMON, row, mode)

    assert [h.name for h in OldStyle.hyperparameters] == [
        "inner_lr", "inner_steps", "first_order", "loss_reduction", "decay", "mode"]
    assert OldStyle.declared()["decay"] == row and OldStyle.declared()["mode"] == mode
    comp = parse_config(GOOD)
    learner = OldStyle(backbone=comp.backbone, task=comp.task, decay=0.25, mode="b")
    assert learner.config.decay == 0.25 and learner.hparams["mode"] == "b"
    for bad, words in ((0.0, "expected a value > 0"), (1.5, "expected a value <= 1"), ("x", "expected a number")):
        with pytest.raises(ConfigError, match=words):
            OldStyle(backbone=comp.backbone, task=comp.task, decay=bad)


def test_fc_init_readings():
    """``model.init``: the truncated normal of the reference code (default, b = 0) or nn.Linear's
    own init, value for value (same seed, same draws in the same order)."""
    import torch

    def meta(init: str | None, model: str = "linear") -> dict:
        section = {"name": model, **({"init": init} if init else {})}
        comp = parse_config({"seed": 0, "task": {"name": "avg_threshold"}, "model": section,
                             "learner": {"name": "maml"}})
        return comp.learner.backbone.init_params(generator=torch.Generator().manual_seed(7))

    default = meta(None)
    assert torch.equal(default["out.bias"], torch.zeros(1)) and default["out.weight"].abs().max() <= 0.02
    torch.manual_seed(7)
    reference = torch.nn.Linear(5, 1)
    mine = meta("torch")
    assert torch.equal(mine["out.weight"], reference.weight.detach())
    assert torch.equal(mine["out.bias"], reference.bias.detach())
    mlp = meta("torch", "mlp")  # the MLP takes it too: 5 -> 40 -> 40 -> 1
    assert mlp["fc1.weight"].abs().max() <= 1 / 40 ** 0.5 and mlp["fc1.bias"].abs().max() > 0
    with pytest.raises(ConfigError, match=r"^field 'model.init': expected one of"):
        meta("kaiming")
