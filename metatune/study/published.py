"""Published numbers that study tables show beside ours, each with the source and the budget
the authors trained with (a reader compares like with like).

Each table maps a row value (e.g. alpha) to ``{learner: (mean, ci95)}``; learner names are
metatune's registry names.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PUBLISHED", "PublishedTable"]


@dataclass(frozen=True)
class PublishedTable:
    title: str
    source: str
    #: What the published numbers were trained with.
    budget: str
    rows: str
    value: str
    #: row -> learner -> (mean, 95 % CI or None where the paper gives none). A learner key
    #: also stands for the study's variants named after it (``wormhole_tanh`` for
    #: ``wormhole_tanh_c05``).
    cells: dict[float, dict[str, tuple[float, float | None]]]

    def key_for(self, learner: str) -> str | None:
        """The published column a study's learner (or variant label) is compared with."""
        names = self.learners
        if learner in names:
            return learner
        prefixes = [n for n in names if learner.startswith(n + "_")]
        return max(prefixes, key=len) if prefixes else None

    def get(self, row: object, learner: str) -> tuple[float, float | None] | None:
        try:
            key = float(row)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        name = self.key_for(learner)
        if name is None:
            return None
        for r, cols in self.cells.items():
            if abs(r - key) <= 1e-9 * max(1.0, abs(r)):
                return cols.get(name)
        return None

    @property
    def learners(self) -> list[str]:
        seen: list[str] = []
        for cols in self.cells.values():
            for name in cols:
                if name not in seen:
                    seen.append(name)
        return seen


#: What the MT-net numbers were trained with (the authors' script).
_AUTHORS_SCRIPT = (
    "the authors' script: 60 000 meta-iterations, meta-batch 4, 1 inner step, Adam 1e-3, 10 query points, "
    "frequency U[0.8, 1.2]; mean ± 95% CI over test tasks, one training run"
)

#: MT-net thesis Table 6.1 by test K (MAML and Meta-SGD from the Meta-SGD paper).
_TABLE_6_1: dict[float, dict[str, tuple[float, float | None]]] = {
    5.0: {
        "maml": (1.07, 0.11), "metasgd": (0.88, 0.14), "mnet_full": (0.91, 0.09), "mnet": (0.88, 0.09),
        "tnet": (0.83, 0.08), "mtnet_full": (0.81, 0.08), "mtnet": (0.76, 0.09),
    },
    10.0: {
        "maml": (0.71, 0.07), "metasgd": (0.53, 0.09), "mnet_full": (0.63, 0.07), "mnet": (0.60, 0.06),
        "tnet": (0.56, 0.06), "mtnet_full": (0.51, 0.05), "mtnet": (0.49, 0.05),
    },
    20.0: {
        "maml": (0.50, 0.05), "metasgd": (0.35, 0.06), "mnet_full": (0.38, 0.04), "mnet": (0.41, 0.04),
        "tnet": (0.38, 0.04), "mtnet_full": (0.35, 0.04), "mtnet": (0.33, 0.04),
    },
}

PUBLISHED: dict[str, PublishedTable] = {
    "mtnet_table_6_2": PublishedTable(
        title="MT-net thesis Table 6.2: 10-shot sine MSE vs step size alpha",
        source="Lee, MSc thesis (MT-net), Table 6.2",
        budget=_AUTHORS_SCRIPT,
        rows="inner_lr",
        value="test_loss",
        cells={
            10.0: {"maml": (171.92, 25.04), "tnet": (4.08, 0.30), "mtnet": (4.18, 0.30)},
            1.0: {"maml": (5.81, 0.49), "tnet": (4.15, 0.30), "mtnet": (0.61, 0.07)},
            0.1: {"maml": (1.05, 0.11), "tnet": (0.68, 0.06), "mtnet": (0.54, 0.05)},
            0.01: {"maml": (0.71, 0.07), "tnet": (0.56, 0.06), "mtnet": (0.49, 0.05)},
            0.001: {"maml": (0.82, 0.08), "tnet": (0.59, 0.06), "mtnet": (0.59, 0.06)},
            0.0001: {"maml": (2.54, 0.19), "tnet": (0.62, 0.06), "mtnet": (0.72, 0.07)},
        },
    ),
    "mtnet_table_6_1": PublishedTable(
        title="MT-net thesis Table 6.1: sine MSE at K = 5, 10, 20 (trained with K = 10, alpha = 0.01, 1 inner step)",
        source="Lee, MSc thesis (MT-net), Table 6.1 (MAML and Meta-SGD rows from the Meta-SGD paper)",
        budget=_AUTHORS_SCRIPT,
        rows="shots",
        value="test_loss",
        cells=_TABLE_6_1,
    ),
    "mtnet_table_6_1_k10": PublishedTable(
        title="MT-net thesis Table 6.1: sine MSE at K = 10 (trained with K = 10, alpha = 0.01)",
        source="Lee, MSc thesis (MT-net), Table 6.1 (MAML and Meta-SGD rows from the Meta-SGD paper)",
        budget=_AUTHORS_SCRIPT,
        rows="inner_lr",
        value="test_loss",
        cells={0.01: _TABLE_6_1[10.0]},  # the K = 10 column as the alpha = 0.01 row
    ),
    "wormhole_table_1_at": PublishedTable(
        title="Wormhole MAML Table 1, Avg-Threshold: cross-entropy error vs inner steps",
        source="Wormhole MAML paper, Table 1 ('Vanilla' = MAML, 'Wormhole 1' = tanh form, 'Wormhole d' = diagonal per weight)",
        budget="SGD 0.1 for 150 'epochs' (undefined), d = 5, one linear layer; K, query size, gamma, C-steps, C_0 and the seed count unstated; no CIs; the error is read as the sum of the BCE over a task's 10 query points (= 10 x mean BCE)",
        rows="inner_steps",
        value="test_loss",
        cells={
            1.0: {"maml": (5.60, None), "wormhole_tanh": (1.56, None), "wormhole_diag": (2.53, None)},
            2.0: {"maml": (5.08, None), "wormhole_tanh": (1.41, None), "wormhole_diag": (2.42, None)},
            5.0: {"maml": (3.33, None), "wormhole_tanh": (1.69, None), "wormhole_diag": (2.17, None)},
        },
    ),
}
