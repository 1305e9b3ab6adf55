"""Seed replicates (``seeds:`` / ``replicates:``): the grid axis, the per-seed run configs, and
every view judging a configuration by its mean over seeds. Pure Python plus an in-process
Optuna grid; no Ray."""

from __future__ import annotations

import statistics

import optuna
import pytest
import yaml
from test_study_views import RUN, _train_result

from metatune.errors import ConfigError
from metatune.study.export import best_trials, export_best, summary_table
from metatune.study.plots import study_plot
from metatune.study.published import PUBLISHED
from metatune.study.records import final_payload, record_from_tune
from metatune.study.spec import parse_study
from metatune.study.table import build_table


def _seeded(tid, learner, alpha, seed, *, loss, objective=None, status="completed"):
    payload = final_payload(
        _train_result(status, loss),
        metric="val_loss",
        penalty=1e6,
        validation={"val_loss": objective if objective is not None else loss},
    )
    return record_from_tune(
        tid,
        {"learner": learner, "inner_lr": alpha, "seed": seed},
        "TERMINATED",
        payload,
        run_config={**RUN, "seed": seed, "learner": {"name": learner, "inner_lr": alpha}},
        metric="val_loss",
    )


def _study(tmp_path, **extra):
    data = {
        "name": "rep",
        "task": {"name": "sine", "shots": 10},
        "learners": ["maml", "tnet"],
        "search_space": {"params": {"inner_lr": {"grid": [0.01, 0.1]}}},
        "sampler": {"name": "grid"},
        "training": {"iterations": 20, "eval_every": 10},
        "evaluation": {"tasks": 10},
        "storage": str(tmp_path / "rep"),
        **extra,
    }
    return parse_study(data, source="rep.yaml", cwd=tmp_path)


def test_a_cell_is_the_mean_over_seeds_with_the_across_seed_sd():
    losses = [0.5, 0.6, 0.8]
    records = [_seeded(f"t{s}", "maml", 0.01, s, loss=v) for s, v in enumerate(losses)]
    table = build_table(records, rows="inner_lr", learners=["maml"], published=PUBLISHED["mtnet_table_6_2"])
    cell = table.cell(0.01, "maml")
    assert cell.seeds == 3 and cell.mean == pytest.approx(statistics.fmean(losses))
    assert cell.seed_sd == pytest.approx(statistics.stdev(losses))  # n - 1: 0.1528
    assert cell.ci95 == pytest.approx(0.1)  # the mean per-seed CI over test tasks
    assert cell.text() == "0.633 ± 0.153 (3 seeds, CI ± 0.100)"
    md = table.to_markdown()
    assert "0.633 ± 0.153 (3 seeds, CI ± 0.100) | 0.71 ± 0.07" in md and "across-seed standard deviation" in md
    line = next(li for li in table.to_csv().splitlines() if li.startswith("0.01,maml"))
    *_, seeds, sd, diverged, ids = line.split(",")
    assert (seeds, float(sd), diverged, ids) == ("3", pytest.approx(statistics.stdev(losses)), "0", "t0 t1 t2")


def test_a_diverged_seed_is_counted_not_averaged():
    records = [
        _seeded("t0", "maml", 0.01, 0, loss=0.5),
        _seeded("t1", "maml", 0.01, 1, loss=0.7),
        _seeded("t2", "maml", 0.01, 2, loss=0.5, status="diverged"),
    ]
    cell = build_table(records, rows="inner_lr", learners=["maml"]).cell(0.01, "maml")
    assert cell.seeds == 2 and cell.mean == pytest.approx(0.6) and cell.diverged_seeds == 1
    assert cell.text().endswith("(2 seeds, CI ± 0.100, 1 diverged)")


def test_the_best_configuration_is_the_best_mean_not_the_luckiest_seed(tmp_path):
    lucky = [_seeded(f"a{s}", "maml", 0.1, s, loss=v) for s, v in enumerate([0.1, 0.9, 0.9])]
    steady = [_seeded(f"b{s}", "maml", 0.01, s, loss=0.5) for s in range(3)]
    records = lucky + steady
    assert [r.trial_id for r in best_trials(records, mode="min")["maml"]] == ["b0"]
    cell = build_table(records, rows="best", learners=["maml"]).cell("best", "maml")
    assert cell.trial_ids == ["b0", "b1", "b2"] and cell.mean == pytest.approx(0.5) and cell.seed_sd == 0
    [exported] = export_best(records, tmp_path / "best", study="rep", metric="val_loss", mode="min")
    text = exported.path.read_text()
    assert "val_loss 0.5 (mean over 3 seeds: 0, 1, 2)" in text and "not a seed" in text
    cfg = yaml.safe_load(text)
    assert cfg["learner"]["inner_lr"] == 0.01 and cfg["seed"] == 0
    summary = summary_table(records, metric="val_loss", mode="min", learners=["maml"])
    assert "0.5 (3 seeds)" in summary and "inner_lr=0.01" in summary and "seed=" not in summary


def test_shots_rows_put_each_test_k_on_its_own_row_beside_table_6_1():
    records = [_seeded(f"t{s}", "mtnet", 0.01, s, loss=v) for s, v in enumerate([0.4, 0.6])]
    table = build_table(records, rows="shots", learners=["mtnet"], published=PUBLISHED["mtnet_table_6_1"])
    assert table.rows == [5, 10, 20]
    # _train_result scores loss * 10 / K at each K.
    assert table.cell(5, "mtnet").mean == pytest.approx(1.0) and table.cell(20, "mtnet").mean == pytest.approx(0.25)
    assert table.cell(5, "mtnet").published == (0.76, 0.09)
    assert table.cell(20, "mtnet").seed_sd == pytest.approx(statistics.stdev([0.2, 0.3]))


def test_a_diverged_seed_is_counted_in_every_k_row():
    records = [_seeded(f"t{s}", "mtnet", 0.01, s, loss=v) for s, v in enumerate([0.4, 0.6])]
    records.append(_seeded("t2", "mtnet", 0.01, 2, loss=0.5, status="diverged"))
    assert not records[-1].curves.get("shots")  # a diverged trial has no test evaluation
    for planned in (None, [5, 10, 20, 40]):
        table = build_table(records, rows="shots", learners=["mtnet"], planned_rows=planned)
        for k in (5, 10, 20):
            cell = table.cell(k, "mtnet")
            assert (cell.seeds, cell.diverged_seeds, cell.trials) == (2, 1, 3), (k, cell)
            assert cell.text().endswith("1 diverged)")
    # A K no completed trial was tested at: the diverged seed alone, said as such.
    assert table.cell(40, "mtnet").status == "diverged"
    alone = build_table(records[-1:], rows="shots", learners=["mtnet"], planned_rows=[5, 10])
    assert [alone.cell(k, "mtnet").status for k in (5, 10)] == ["diverged", "diverged"]


def test_the_study_plot_draws_replicated_cells(tmp_path):
    records = [_seeded(f"{a}{s}", "maml", a, s, loss=0.5 + 0.1 * s + a) for a in (0.01, 0.1) for s in range(3)]
    table = build_table(records, rows="inner_lr", learners=["maml"])
    path = study_plot(table, tmp_path / "p.png", records=records)
    assert path.stat().st_size > 10_000
    best = build_table(records, rows="best", learners=["maml"])
    assert study_plot(best, tmp_path / "b.png", records=records).stat().st_size > 10_000


def test_seeds_are_a_grid_axis_and_each_trial_trains_its_seed(tmp_path):
    study = _study(tmp_path, seeds=[3, 4, 5])
    assert study.num_trials == 2 * 2 * 3
    grid = study.space.grid()
    assert grid["seed"] == [3, 4, 5]
    cfg = study.plan.run_config_for({"learner": "tnet", "inner_lr": 0.1, "seed": 4})
    assert cfg["seed"] == 4 and "seed" not in cfg["learner"] and cfg["learner"]["inner_lr"] == 0.1
    # Optuna's grid walks every (learner, alpha, seed) once through the define-by-run space.
    sampler = optuna.samplers.GridSampler(grid, seed=0)
    ot = optuna.create_study(sampler=sampler)
    ot.optimize(lambda t: (study.space(t), 0.0)[1], n_trials=study.num_trials)
    seen = {(t.params["learner"], t.params["inner_lr"], t.params["seed"]) for t in ot.trials}
    assert len(seen) == 12
    assert _study(tmp_path, seed=7, replicates=2).space.grid()["seed"] == [7, 8]
    assert "seed" not in _study(tmp_path).space.grid()


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"seeds": [0, 1], "sampler": {"name": "tpe"}, "search_space": None, "trials": 4}, "seeds", "sampler: grid"),
        ({"seeds": [0, 1], "replicates": 2}, "replicates", "not both"),
        ({"seeds": [1, 1]}, "seeds", "distinct"),
        ({"seeds": []}, "seeds", "at least one"),
        ({"replicates": 0}, "replicates", "positive"),
    ],
)
def test_bad_replicates_are_one_line(tmp_path, extra, field, words):
    with pytest.raises(ConfigError) as err:
        _study(tmp_path, **extra)
    assert err.value.field == field and words in str(err.value) and "\n" not in str(err.value)


def test_the_progress_line_names_the_best_mean_configuration(tmp_path):
    from metatune.study.monitor import progress_line

    study = _study(tmp_path, seeds=[0, 1, 2])
    lucky = [_seeded(f"a{s}", "maml", 0.1, s, loss=v) for s, v in enumerate([0.1, 0.9, 0.9])]
    steady = [_seeded(f"b{s}", "tnet", 0.01, s, loss=0.5) for s in range(3)]
    line = progress_line(study, lucky + steady, 0.0)
    assert "best val_loss 0.5 over 3 seeds (tnet: inner_lr=0.01)" in line
