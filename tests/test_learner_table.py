"""`metatune learners` and docs/learners.md come from the learners' own declarations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from metatune.learner_table import generated_section, learner_rows, markdown_table, shipped_names
from metatune.learners import LEARNERS

ROOT = Path(__file__).resolve().parents[1]


def test_docs_table_is_the_generated_one():
    text = (ROOT / "docs" / "learners.md").read_text(encoding="utf-8")
    section = generated_section(text)
    assert section is not None, "docs/learners.md lost its generated-section markers"
    want = markdown_table(learner_rows(shipped_names()))
    assert section == want, "docs/learners.md is stale: run `python -m metatune.learner_table docs/learners.md`"


def test_every_declared_setting_has_a_row_with_its_declaration():
    rows = learner_rows(shipped_names())
    assert {r.learner for r in rows} == set(shipped_names()) and len(shipped_names()) >= 11
    for name in shipped_names():
        declared = LEARNERS.get(name).declared()
        mine = {r.setting: r for r in rows if r.learner == name}
        assert set(mine) == set(declared), name
        for setting, h in declared.items():
            row = mine[setting]
            assert row.type == h.kind and row.symbol == (h.symbol or "-") and row.help == (h.help or "-")
            assert (row.search == "-") == (h.search is None)
    pamela = {r.setting: r for r in rows if r.learner == "pamela"}
    assert pamela["skip_width"].symbol == "w" and pamela["skip_width"].default == "2"
    assert {r.setting: r for r in rows if r.learner == "maml"}["inner_lr"].valid == "(0, inf]"


def test_every_shipped_setting_names_its_source():
    """Each default says where it comes from (algorithms.md's tags); a typo is refused."""
    import pytest

    from metatune.learners.hparams import setting

    rows = learner_rows(shipped_names())
    assert {r.source for r in rows} == {"paper", "code", "inferred"}
    missing = [f"{r.learner}.{r.setting}" for r in rows if r.source == "-"]
    assert not missing, f"settings without a source: {missing}"
    with pytest.raises(TypeError, match="source must be one of"):
        setting(1.0, source="papers")  # type: ignore[arg-type]


def test_cli_prints_the_table_and_refuses_an_unknown_learner():
    run = [sys.executable, "-m", "metatune.cli", "learners"]
    out = subprocess.run([*run, "maml", "mtnet"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["learner", "setting", "symbol"]
    assert any(line.startswith("mtnet") and "mask_temperature" in line for line in lines)
    assert not any(line.startswith("pamela") for line in lines)
    md = subprocess.run([*run, "--markdown"], capture_output=True, text=True, timeout=120)
    assert md.returncode == 0 and md.stdout.startswith("| learner | setting |")
    bad = subprocess.run([*run, "reptile"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown learner 'reptile'" in bad.stderr and bad.stderr.count("\n") == 1
