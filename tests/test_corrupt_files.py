"""Corrupt, truncated and foreign checkpoints and trials.parquet files: a CheckpointError naming
the file (one line), never a silent wrong result, never code run from a pickle; `metatune train
--resume` turns it into one line and exit code 2; `metatune report`'s rewrite recovers a corrupt
trials.parquet."""

from __future__ import annotations

import io
import os
import pickle
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from metatune.cli import main
from metatune.config import parse_config
from metatune.errors import CheckpointError
from metatune.study.records import record_from_tune
from metatune.study.results import read_trials, write_trials
from metatune.trial import CHECKPOINT_FILE, Trainer, load_checkpoint

BASE = {
    "task": {"name": "sine", "shots": 5},
    "model": {"name": "mlp", "hidden": [8, 8]},
    "learner": {"name": "maml", "inner_lr": 0.02},
    "training": {"iterations": 2, "meta_batch": 2, "eval_every": 0, "log_every": 1, "val_tasks": 4},
    "evaluation": {"tasks": 4, "shots": [5], "inner_steps": 1, "lr_scales": [1.0], "chunk": 4},
}


#: The tag of a metatune checkpoint (a payload that carries it looks like one).
FORMAT = "metatune-checkpoint-1"


class Payload:
    """A pickle whose loading runs ``touch MARKER`` (the classic __reduce__ exploit)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / CHECKPOINT_FILE
    Trainer(parse_config(BASE)).save(path)
    return path.read_bytes()


def _damaged_state(good: bytes, tmp: Path, change) -> None:  # noqa: ANN001 - a callable on the dict
    state = torch.load(_write(tmp / "src.pt", good), weights_only=True)
    change(state)
    torch.save(state, tmp / "bad.pt")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _flip_tensor_byte(good: bytes) -> bytes:
    """One bit flipped inside the largest stored tensor: the zip and the pickle stay readable,
    only the member's CRC32 tells."""
    with zipfile.ZipFile(io.BytesIO(good)) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        payload = archive.read(member)
    start = good.find(payload)  # torch stores members uncompressed
    assert start > 0 and good.count(payload) == 1
    data = bytearray(good)
    data[start + len(payload) // 2] ^= 0x01
    return bytes(data)


#: name -> how to make the bad file from (good checkpoint bytes, tmp folder, marker path).
BAD_CHECKPOINTS = {
    "truncated_half": lambda good, tmp, m: _write(tmp / "bad.pt", good[: len(good) // 2]),
    "truncated_tail": lambda good, tmp, m: _write(tmp / "bad.pt", good[:-20]),
    "zero_bytes": lambda good, tmp, m: _write(tmp / "bad.pt", b""),
    "random_bytes": lambda good, tmp, m: _write(tmp / "bad.pt", random.Random(0).randbytes(4096)),
    "text": lambda good, tmp, m: _write(tmp / "bad.pt", b"iteration: 3\nmeta: {}\n"),
    "bit_flip": lambda good, tmp, m: _write(tmp / "bad.pt", _flip_tensor_byte(good)),
    "torch_list": lambda good, tmp, m: torch.save([1, 2, 3], tmp / "bad.pt"),
    "torch_foreign_dict": lambda good, tmp, m: torch.save({"weights": {"w": torch.zeros(2)}}, tmp / "bad.pt"),
    "missing_parts": lambda good, tmp, m: _damaged_state(good, tmp, lambda s: s.pop("optimizer")),
    "meta_not_tensors": lambda good, tmp, m: _damaged_state(
        good, tmp, lambda s: s.update(meta={k: 1.0 for k in s["meta"]})
    ),
    "config_not_mapping": lambda good, tmp, m: _damaged_state(good, tmp, lambda s: s.update(config=[1])),
    "config_invalid": lambda good, tmp, m: _damaged_state(
        good, tmp, lambda s: s["config"].update(learner={"name": "no-such-learner"})
    ),
    "meta_wrong_shapes": lambda good, tmp, m: _damaged_state(
        good, tmp, lambda s: s.update(meta={k: torch.zeros(3) for k in s["meta"]})
    ),
    "pickle_payload": lambda good, tmp, m: _write(tmp / "bad.pt", pickle.dumps(Payload(m))),
    "torch_payload": lambda good, tmp, m: torch.save({"format": FORMAT, "x": Payload(m)}, tmp / "bad.pt"),
}


def _make(name: str, good: bytes, tmp: Path) -> tuple[Path, Path]:
    marker = tmp / "PAYLOAD_RAN"
    BAD_CHECKPOINTS[name](good, tmp, marker)
    return tmp / "bad.pt", marker


@pytest.mark.parametrize("name", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_a_checkpoint_error(tmp_path, good_checkpoint, name):
    path, marker = _make(name, good_checkpoint, tmp_path)
    components = parse_config(BASE)
    calls = [lambda: Trainer.restore(path, components), lambda: Trainer.restore(path)]
    # load_checkpoint itself accepts a well-formed state of the wrong shapes or config; only
    # restore can tell.
    if name not in ("meta_wrong_shapes", "config_invalid"):
        calls.append(lambda: load_checkpoint(path))
    for call in calls:
        with pytest.raises(CheckpointError) as err:
            call()
        message = str(err.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        assert len(message) < 400, message
    assert not marker.exists(), "loading the checkpoint ran the pickle's code"


def test_good_checkpoint_still_loads(tmp_path, good_checkpoint):
    path = _write(tmp_path / CHECKPOINT_FILE, good_checkpoint)
    state = load_checkpoint(path)
    assert state["iteration"] == 0 and state["config"]["learner"]["name"] == "maml"
    assert Trainer.restore(path).iteration == 0


def test_checkpoint_of_another_learner_is_refused(tmp_path, good_checkpoint):
    """FOMAML has MAML's parameters: only the stored config tells the runs apart."""
    path = _write(tmp_path / CHECKPOINT_FILE, good_checkpoint)
    other = parse_config({**BASE, "learner": {**BASE["learner"], "name": "fomaml"}})
    with pytest.raises(CheckpointError, match=r"written by learner 'maml', this run's learner is 'fomaml'"):
        Trainer.restore(path, other)
    assert Trainer.restore(path, parse_config(BASE)).iteration == 0


def _train_resume(tmp_path: Path, bad: bytes) -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(BASE))
    out = tmp_path / "out"
    out.mkdir()
    _write(out / CHECKPOINT_FILE, bad)
    return cfg


@pytest.mark.parametrize("name", sorted(BAD_CHECKPOINTS))
def test_train_resume_with_bad_checkpoint_exits_2(tmp_path, good_checkpoint, capsys, name):
    path, marker = _make(name, good_checkpoint, tmp_path)
    cfg = _train_resume(tmp_path, path.read_bytes())
    out = tmp_path / "out"
    code = main(["train", str(cfg), "--output", str(out), "--resume", "--no-progress"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and str(out / CHECKPOINT_FILE) in lines[0], lines
    assert "Traceback" not in captured.out + captured.err and captured.out == ""
    assert not (out / "result.json").exists() and not marker.exists()


def test_train_resume_subprocess_refuses_payload(tmp_path):
    """The real process: exit 2, one stderr line (no torch warning either), payload not run."""
    marker = tmp_path / "PAYLOAD_RAN"
    cfg = _train_resume(tmp_path, b"")
    torch.save({"format": FORMAT, "x": Payload(marker)}, tmp_path / "out" / CHECKPOINT_FILE)
    proc = subprocess.run(
        [sys.executable, "-m", "metatune.cli", "train", str(cfg), "--output", str(tmp_path / "out"),
         "--resume"],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and CHECKPOINT_FILE in proc.stderr
    assert not marker.exists()


# ---------------------------------------------------------------------- trials.parquet
RUN = {"learner": {"name": "maml", "inner_lr": 0.01}, "training": {"outer_lr": 1e-3}}


def _records():
    return [
        record_from_tune(
            f"t{i}",
            {"learner": "maml", "inner_lr": 0.01 * (i + 1)},
            "TERMINATED",
            {"outcome": "completed", "iteration": 10, "val_loss": 1.0 + i, "test_loss": 0.5 + i},
            run_config=RUN,
            metric="val_loss",
        )
        for i in range(50)
    ]


@pytest.fixture
def good_parquet(tmp_path) -> Path:
    return write_trials(_records(), tmp_path / "good.parquet", study="s", metric="val_loss")


def _flip_data_byte(data: bytes) -> bytes:
    """One bit flipped in the middle of the file: a data page, the footer intact."""
    out = bytearray(data)
    out[len(out) // 3] ^= 0x01
    return bytes(out)


BAD_PARQUETS = {
    "truncated_half": lambda good: good[: len(good) // 2],
    "truncated_tail": lambda good: good[:-8],
    "zero_bytes": lambda good: b"",
    "random_bytes": lambda good: random.Random(1).randbytes(4096),
    "random_framed": lambda good: b"PAR1" + random.Random(2).randbytes(4096) + b"PAR1",
    "bit_flip": _flip_data_byte,
}


def _table_bytes(table: pa.Table, tmp: Path) -> bytes:
    pq.write_table(table, tmp / "src.parquet")
    return (tmp / "src.parquet").read_bytes()


FOREIGN_TABLES = {
    "no_trial_id": lambda good: pa.table({"x": [1, 2]}),
    "trial_id_only": lambda good: pa.table({"trial_id": ["a", "b"]}),
    "missing_status": lambda good: good.drop_columns(["status"]),
    "trial_id_as_int": lambda good: good.set_column(
        good.schema.get_field_index("trial_id"), "trial_id", pa.array(range(good.num_rows))
    ),
    "objective_as_string": lambda good: good.set_column(
        good.schema.get_field_index("objective"), "objective", pa.array(["x"] * good.num_rows)
    ),
}


def _assert_one_line_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as err:
        read_trials(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 400, message
    return message


@pytest.mark.parametrize("name", sorted(BAD_PARQUETS))
def test_damaged_trials_parquet_is_a_clear_error(tmp_path, good_parquet, name):
    bad = _write(tmp_path / "trials.parquet", BAD_PARQUETS[name](good_parquet.read_bytes()))
    assert "rebuild it with `metatune report`" in _assert_one_line_error(bad)


@pytest.mark.parametrize("name", sorted(FOREIGN_TABLES))
def test_foreign_trials_parquet_is_a_clear_error(tmp_path, good_parquet, name):
    table = FOREIGN_TABLES[name](pq.read_table(good_parquet))
    bad = _write(tmp_path / "trials.parquet", _table_bytes(table, tmp_path))
    assert "not a metatune trials file" in _assert_one_line_error(bad)


def test_single_bit_flips_never_change_core_columns_silently(tmp_path, good_parquet):
    """300 single-bit flips spread over the file: each read either fails with CheckpointError
    or gives the original rows. (Parquet's footer has no checksum: a flip inside a ``param.*``
    column *name* renames that column; params_json keeps the values, so those are left out.)"""
    good = good_parquet.read_bytes()
    core = [{k: v for k, v in r.items() if not k.startswith("param.")} for r in read_trials(good_parquet)]
    bad = tmp_path / "flipped.parquet"
    outcomes = {"error": 0, "same": 0}
    for pos in random.Random(4).sample(range(len(good)), 300):
        data = bytearray(good)
        data[pos] ^= 1 << (pos % 8)
        bad.write_bytes(data)
        try:
            rows = read_trials(bad)
        except CheckpointError as exc:
            assert str(exc).startswith(f"{bad}: ") and "\n" not in str(exc)
            outcomes["error"] += 1
            continue
        assert [{k: v for k, v in r.items() if not k.startswith("param.")} for r in rows] == core, pos
        outcomes["same"] += 1
    assert outcomes["error"] > 100, outcomes


def test_good_trials_parquet_round_trips(good_parquet):
    rows = read_trials(good_parquet)
    assert [r["trial_id"] for r in rows] == [f"t{i}" for i in range(50)]
    assert rows[3]["test_loss"] == 3.5 and rows[3]["param.inner_lr"] == pytest.approx(0.04)


def test_report_rewrite_recovers_a_corrupt_trials_parquet(tiny_study):
    """`metatune report` never reads trials.parquet: it rebuilds every view from Tune storage
    (metatune.study.report.rebuild) and replaces the file atomically, so a corrupt file cannot
    stop it. Here: rebuild over a corrupt file, with the records Tune storage would give."""
    from metatune.study.report import rebuild

    study = tiny_study("recover")
    study.parquet_path.parent.mkdir(parents=True)
    study.parquet_path.write_bytes(random.Random(3).randbytes(2048))
    _assert_one_line_error(study.parquet_path)
    records = _records()[:2]
    _, files = rebuild(study, records, tracker=None)
    assert files["parquet"] == study.parquet_path
    assert [r["trial_id"] for r in read_trials(study.parquet_path)] == ["t0", "t1"]
