"""Safety: no unsafe deserialisation in the package (static scan, and YAML python tags refused
at run time), the MLflow UI binds loopback unless told otherwise, and secrets in the
environment never reach MLflow params, tags, notes or artifacts."""

from __future__ import annotations

import ast
import contextlib
import sys
import types
from pathlib import Path

import pytest
import yaml

import metatune.study
from metatune.cli import build_parser, main
from metatune.errors import ConfigError
from metatune.yaml_files import read_yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "metatune"

# ---------------------------------------------------------------------- (a) static scan
#: module -> attributes that deserialise arbitrary objects (code execution on load).
UNSAFE = {
    "yaml": {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all",
             "Loader", "UnsafeLoader", "FullLoader", "Unpickler"},
    "pickle": {"load", "loads", "Unpickler"},
    "_pickle": {"load", "loads", "Unpickler"},
    "cloudpickle": {"load", "loads"},
    "dill": {"load", "loads"},
    "joblib": {"load"},
    "marshal": {"load", "loads"},
    "shelve": {"open"},
    "pandas": {"read_pickle"},
}  # fmt: skip
#: Reviewed uses: (file, enclosing function, call) -> why it is acceptable.
#: (None now: Optuna's record is read from its RDB storage, not from Tune's searcher pickle.)
ALLOWED: dict[tuple[str, str, str], str] = {}


class _Scanner(ast.NodeVisitor):
    """Finds unsafe deserialisation: module.attr references from UNSAFE (through aliases and
    ``from`` imports), ``torch.load`` without ``weights_only=True``, ``numpy.load`` with
    ``allow_pickle=True``, and bare ``eval``/``exec`` calls."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}  # local name -> module
        self.imported: dict[str, str] = {}  # local name -> "module.attr"
        self.function = "<module>"
        self.found: list[tuple[str, str, int]] = []  # (function, "module.attr", line)

    def _flag(self, what: str, node: ast.AST) -> None:
        self.found.append((self.function, what, node.lineno))

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.aliases[a.asname or a.name.split(".")[0]] = a.name

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        for a in node.names:
            self.imported[a.asname or a.name] = f"{module}.{a.name}"
            if a.name in UNSAFE.get(module, ()) or (module == "torch" and a.name == "load"):
                self._flag(f"{module}.{a.name}", node)

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_function

    def _dotted(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = self.aliases.get(node.value.id)
            return f"{module}.{node.attr}" if module else None
        if isinstance(node, ast.Name):
            return self.imported.get(node.id)
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = self._dotted(node)
        if name:
            module, attr = name.rsplit(".", 1)
            if attr in UNSAFE.get(module, ()):
                self._flag(name, node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = self._dotted(node.func)
        kw = {k.arg: k.value for k in node.keywords}

        def is_true(key: str) -> bool:
            return isinstance(kw.get(key), ast.Constant) and kw[key].value is True

        if name == "torch.load" and not is_true("weights_only"):
            self._flag("torch.load without weights_only=True", node)
        if name == "numpy.load" and "allow_pickle" in kw and not (
            isinstance(kw["allow_pickle"], ast.Constant) and kw["allow_pickle"].value is False
        ):
            self._flag("numpy.load with allow_pickle", node)
        if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
            self._flag(node.func.id, node)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        # ``f = torch.load`` (a reference, not a call) would escape the keyword check.
        if isinstance(node.ctx, ast.Load) and self.imported.get(node.id) == "torch.load":
            self._flag("torch.load reference", node)


def scan(source: str) -> list[tuple[str, str, int]]:
    scanner = _Scanner()
    scanner.visit(ast.parse(source))
    return scanner.found


@pytest.mark.parametrize(
    "snippet",
    [
        "import yaml\nyaml.load(open('f'))",
        "import yaml\nyaml.load(s, Loader=yaml.SafeLoader)",  # load itself is the smell
        "import yaml\nyaml.safe_load(s) or yaml.Loader",
        "import yaml as y\ny.unsafe_load(s)",
        "from yaml import full_load",
        "import pickle\npickle.loads(b)",
        "import pickle as p\ndef f():\n    return p.load(open('x', 'rb'))",
        "import torch\ntorch.load(p)",
        "import torch\ntorch.load(p, weights_only=False)",
        "import torch as t\nt.load(p, map_location='cpu')",
        "from torch import load\nload(p, weights_only=True)",
        "import numpy as np\nnp.load(p, allow_pickle=True)",
        "import joblib\njoblib.load(p)",
        "eval(text)",
    ],
)
def test_scanner_catches_unsafe_loads(snippet):
    assert scan(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "import yaml\nyaml.safe_load(s)\nyaml.safe_dump(d)",
        "import torch\ntorch.load(p, map_location='cpu', weights_only=True)",
        "import torch\ntorch.save(x, p)",
        "import pickle\npickle.dumps(x)",
        "import numpy as np\nnp.load(p)",
        "model.eval()",
    ],
)
def test_scanner_passes_safe_code(snippet):
    assert not scan(snippet), snippet


def test_package_has_no_unsafe_deserialisation():
    """Fails when any module of metatune/ adds an unsafe load; reviewed exceptions in ALLOWED."""
    found, allowed_seen = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for function, what, line in scan(path.read_text()):
            if (rel, function, what) in ALLOWED:
                allowed_seen.add((rel, function, what))
            else:
                found.append(f"{rel}:{line} in {function}: {what}")
    assert not found, "unsafe deserialisation:\n" + "\n".join(found)
    assert allowed_seen == set(ALLOWED), f"stale ALLOWED entries: {set(ALLOWED) - allowed_seen}"
    assert len(list(PACKAGE.rglob("*.py"))) > 30  # the scan really read the package


# ---------------------------------------------------------------------- (a) YAML python tags
PAYLOADS = [
    '!!python/object/apply:os.system ["touch {m}"]',
    '!!python/object/new:os.system ["touch {m}"]',
    "!!python/object/apply:subprocess.check_call [[touch, {m}]]",
    '!!python/object/apply:builtins.exec ["open(\'{m}\', \'w\').close()"]',
    "!!python/name:os.system",
]


@contextlib.contextmanager
def _poisoned_ray():
    poisoned = types.ModuleType("metatune.study._ray")

    def boom(name: str):
        raise AssertionError(f"Ray adapter used: {name}")

    poisoned.__getattr__ = boom  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "metatune.study._ray", poisoned)
        mp.setattr(metatune.study, "_ray", poisoned, raising=False)
        yield


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.out + captured.err, captured
    return lines[0]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_yaml_python_tags_are_refused_everywhere(tmp_path, capsys, payload):
    marker = tmp_path / "PAYLOAD_RAN"
    value = payload.format(m=marker)
    good_study = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())

    # read_yaml itself
    f = tmp_path / "tagged.yaml"
    f.write_text(f"name: {value}\n")
    with pytest.raises(ConfigError) as err:
        read_yaml(f)
    assert err.value.field == "<yaml>" and err.value.source == str(f)

    # a study file, and a whole document that is the tag
    study = tmp_path / "study.yaml"
    space = tmp_path / "space.yaml"
    with _poisoned_ray():
        for text in (yaml.safe_dump(good_study).replace("name: quickstart", f"name: {value}"), value + "\n"):
            study.write_text(text)
            assert main(["run", str(study), "--storage", str(tmp_path / "st")]) == 2
            assert _one_error_line(capsys).startswith(f"metatune: error: {study}: field '<yaml>': ")
        # a search-space file the study points to
        space.write_text(f"params:\n  inner_lr: {value}\n")
        study.write_text(yaml.safe_dump({**good_study, "search_space": str(space)}))
        assert main(["run", str(study), "--storage", str(tmp_path / "st")]) == 2
        assert _one_error_line(capsys).startswith(f"metatune: error: {space}: field '<yaml>': ")

    # a run config for `metatune train`
    run = tmp_path / "run.yaml"
    run.write_text(f"task: {{name: sine}}\nlearner: {{name: maml}}\nseed: {value}\n")
    assert main(["train", str(run), "--output", str(tmp_path / "out")]) == 2
    assert _one_error_line(capsys).startswith(f"metatune: error: {run}: field '<yaml>': ")

    assert not marker.exists(), "a YAML python tag was executed"
    assert not (tmp_path / "st").exists() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- (b) MLflow UI binding
def test_ui_command_binds_loopback_by_default():
    from metatune.study.ui import ui_command

    cmd = ui_command("sqlite:////tmp/x/mlflow.db")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd.count("--host") == 1
    assert "0.0.0.0" not in cmd
    cmd = ui_command("sqlite:////tmp/x/mlflow.db", host="0.0.0.0", port=5123)
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and cmd[cmd.index("--port") + 1] == "5123"


def test_ui_parser_defaults_to_loopback():
    parser = build_parser()
    assert parser.parse_args(["ui"]).host == "127.0.0.1"
    assert parser.parse_args(["ui", "some/study"]).host == "127.0.0.1"
    assert parser.parse_args(["ui", "--host", "0.0.0.0"]).host == "0.0.0.0"


class _FakeServer:
    """Stands in for the ``mlflow server`` process: records the command, starts nothing."""

    commands: list[list[str]] = []

    def __init__(self, cmd, **kwargs) -> None:  # noqa: ANN001 - Popen's signature
        _FakeServer.commands.append(list(cmd))
        self.pid = -1

    def wait(self, timeout=None) -> int:  # noqa: ANN001
        return 0


@pytest.fixture
def frozen_study(tiny_study):
    study = tiny_study("ui_check")
    study.write_frozen()
    return study


def test_metatune_ui_passes_loopback_to_the_server(frozen_study, monkeypatch, capsys):
    import metatune.study.ui as study_ui

    _FakeServer.commands = []
    monkeypatch.setattr(study_ui.subprocess, "Popen", _FakeServer)
    monkeypatch.setattr(study_ui, "_stop_group", lambda proc: None)
    def no_tracker(study):  # noqa: ANN001
        raise RuntimeError("no MLflow here")  # cmd_ui treats the run link as optional

    monkeypatch.setattr(study_ui, "tracker_for", no_tracker)
    assert main(["ui", str(frozen_study.dir)]) == 0
    assert main(["ui", str(frozen_study.dir), "--host", "0.0.0.0", "--port", "5999"]) == 0
    default, explicit = _FakeServer.commands
    assert default[default.index("--host") + 1] == "127.0.0.1" and "0.0.0.0" not in default
    assert explicit[explicit.index("--host") + 1] == "0.0.0.0"
    assert explicit[explicit.index("--port") + 1] == "5999"
    assert "http://127.0.0.1:5000" in capsys.readouterr().out


# ---------------------------------------------------------------------- (c) secrets
SECRET = "s3cr3t-MARKER-7f1c9a"
SECRET_ENV = [
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "GITHUB_TOKEN", "RAY_AUTH_TOKEN",
    "DATABASE_URL", "OPENAI_API_KEY",
]  # fmt: skip


def _record(study, trial_id: str):
    from metatune.study.records import record_from_tune

    params = {"learner": "maml", "inner_lr": 0.05}
    result = {
        "outcome": "completed", "iteration": 20, "val_loss": 0.4, "test_loss": 0.3, "test_loss_ci95": 0.01,
        "wall_time_s": 1.0,
        "curves": {"train": {"iteration": [10, 20], "train_loss": [1.0, 0.5]}, "shots": [5],
                   "loss_by_shots": [0.3], "loss_by_shots_ci95": [0.01], "loss_by_step": [1.0, 0.3],
                   "lr_scales": [1.0], "loss_by_lr_scale": [0.3]},
    }  # fmt: skip
    return record_from_tune(
        trial_id, params, "TERMINATED", result, run_config=study.run_config_for(params), metric=study.metric
    )


def _everything_logged(tracker, study) -> list[str]:
    """Every param (key and value), tag, run name, experiment tag, metric name and artifact
    text of the study's MLflow experiment, and the study's own files."""
    client = tracker.client
    exp = client.get_experiment(tracker.experiment_id())
    out = [exp.name, *map(str, exp.tags.items())]
    for run in client.search_runs([exp.experiment_id]):
        out += [run.info.run_name or "", *map(str, run.data.params.items()), *map(str, run.data.tags.items())]
        out += list(run.data.metrics)
    files = [p for p in Path(study.dir).rglob("*") if p.is_file() and p.suffix != ".db"]
    out += [p.read_bytes().decode("utf-8", "replace") for p in files]
    return out


@pytest.fixture
def logged_study(tiny_study, monkeypatch):
    """A study rebuilt into a real sqlite MLflow store with secrets in the environment."""
    for name in SECRET_ENV:
        monkeypatch.setenv(name, SECRET)
    from metatune.study._mlflow import Tracker
    from metatune.study.report import rebuild

    study = tiny_study("secrets")
    study.write_frozen()
    tracker = Tracker(
        study.tracking_uri, study.experiment, study=study.name, artifact_location=study.artifact_location
    )
    views, _ = rebuild(study, [_record(study, "t1"), _record(study, "t2")], tracker=tracker)
    assert views.mlflow_errors == 0, views.last_error
    return study, tracker


def test_env_secrets_reach_no_mlflow_param_tag_or_artifact(logged_study):
    study, tracker = logged_study
    logged = _everything_logged(tracker, study)
    # The views really were logged: child params, the table artifact, the trial files.
    assert any("config.training.iterations" in s for s in logged) and "('inner_lr', '0.05')" in logged
    assert any("| maml" in s for s in logged) and any('"trial_id": "t1"' in s for s in logged)
    leaks = [s[:200] for s in logged if SECRET in s]
    assert not leaks, leaks


def test_tracking_uri_credentials_are_not_logged(logged_study):
    from metatune.study._mlflow import Tracker
    from metatune.study.spec import parse_study

    study, tracker = logged_study
    with_creds = parse_study(
        study.frozen(),
        source=str(study.dir / "study.yaml"),
        tracking_uri=f"http://metatune:{SECRET}@127.0.0.1:1",
    )
    other = Tracker(tracker.uri, "with_creds", study="with_creds", artifact_location=study.artifact_location)
    other.start(with_creds.frozen())
    params = [str(r.data.params) for r in other.client.search_runs([other.experiment_id()])]
    assert params and not [p for p in params if SECRET in p]


def test_redacted_uri_keeps_everything_but_the_password():
    from metatune.study._mlflow import redact_uri

    assert redact_uri(f"https://me:{SECRET}@mlflow.lab:5000/path?x=1") == "https://me:***@mlflow.lab:5000/path?x=1"
    assert redact_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert redact_uri("sqlite:////tmp/a/mlflow.db") == "sqlite:////tmp/a/mlflow.db"
