"""The advert risk model: trafficking-indicator risk of an online advert, all categories.

Hashed word and character n-grams (no shared vocabulary) into a small dense model. The
default is a linear model over 2^12 buckets: under DP-SGD the noise grows with the square
root of the parameter count, and on the synthetic federation a hidden layer bought no
ROC-AUC at eps=3 while costing time (see README, "Model size").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from federation import limits
from federation.data import AgencyData, load_agency
from federation.errors import TaskError
from federation.records import RecordSchema, RecordTable
from federation.schema import ADVERT_RECORDS
from federation.tasks import Task, TaskParams, register_task
from federation.tasks.advert_explain import Explainer
from federation.text import FEATURES_VERSION, HashingFeaturizer, SparseRows


@dataclass(frozen=True)
class AdvertRiskParams(TaskParams):
    num_buckets: int = 4096
    hidden: int = 0
    word_ngrams: int = 2
    char_min: int = 3
    char_max: int = 5
    exclude_special_categories: bool = True

    def check(self) -> list[str]:
        p = []
        n = self.num_buckets
        if n < 16 or n & (n - 1):
            p.append(f"task.num_buckets={n} must be a power of two >= 16, e.g. 4096")
        elif n > limits.MAX_BUCKETS:
            p.append(f"task.num_buckets={n} is above the limit of {limits.MAX_BUCKETS} (2**18), "
                     "e.g. 4096")
        if not 0 <= self.hidden <= limits.MAX_HIDDEN:
            p.append(f"task.hidden={self.hidden} must be 0 to {limits.MAX_HIDDEN} "
                     "(0 means a linear model)")
        if not 1 <= self.word_ngrams <= limits.MAX_WORD_NGRAMS:
            p.append(f"task.word_ngrams={self.word_ngrams} must be 1 to "
                     f"{limits.MAX_WORD_NGRAMS}")
        if self.char_max > limits.MAX_CHAR_NGRAM:
            p.append(f"task.char_max={self.char_max} must be at most {limits.MAX_CHAR_NGRAM}")
        if self.char_max != 0 and not 1 <= self.char_min <= self.char_max:
            p.append(
                f"task.char_min={self.char_min}, task.char_max={self.char_max} must satisfy "
                "1 <= char_min <= char_max (or char_max=0 for no character n-grams)"
            )
        return p


class AdvertRiskModel(nn.Module):
    """Logistic regression (hidden=0) or a one-hidden-layer MLP over hashed features."""

    def __init__(self, num_buckets: int, hidden: int) -> None:
        super().__init__()
        if hidden == 0:
            self.net: nn.Module = nn.Linear(num_buckets, 1)
        else:
            self.net = nn.Sequential(
                nn.Linear(num_buckets, hidden), nn.ReLU(), nn.Linear(hidden, 1)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x).squeeze(-1)
        return out


@register_task
class AdvertRiskTask(Task):
    """One record is one advert (federation.schema.ADVERT_RECORDS); the model reads its
    normalised text only."""

    name: ClassVar[str] = "advert-risk"
    params_type: ClassVar[type[TaskParams]] = AdvertRiskParams
    record_schema: ClassVar[RecordSchema] = ADVERT_RECORDS
    features_version: ClassVar[int] = FEATURES_VERSION
    privacy_unit: ClassVar[str] = "one advert record in one agency's training export"
    intended_use: ClassVar[str] = (
        "ranking adverts for review by a trained analyst. A score is a lead for a person to "
        "assess, never a decision about anyone.")

    @property
    def featurizer(self) -> HashingFeaturizer:
        p = self.params
        assert isinstance(p, AdvertRiskParams)
        return HashingFeaturizer(
            num_buckets=p.num_buckets,
            word_ngrams=p.word_ngrams,
            char_min=p.char_min,
            char_max=p.char_max,
            exclude_special_categories=p.exclude_special_categories,
        )

    def load(self, data_dir: Path) -> AgencyData:
        return load_agency(data_dir)

    def records(self, table: RecordTable, rows: np.ndarray | None = None) -> list[Any]:
        """An advert's record is its text (normalised when it was read)."""
        texts = table.column("text")
        return list(texts) if rows is None else [texts[int(i)] for i in rows]

    def featurize(self, records: Sequence[Any]) -> SparseRows:
        return self.featurizer.transform(list(records))

    def build_model(self) -> nn.Module:
        p = self.params
        assert isinstance(p, AdvertRiskParams)
        return AdvertRiskModel(p.num_buckets, p.hidden)

    def explainer(self, model: nn.Module) -> Explainer:
        """Exact for the linear model only: a hidden layer's score has no exact shares."""
        linear = getattr(model, "net", None)
        if not isinstance(linear, nn.Linear):
            raise TaskError(
                "this bundle's model has a hidden layer (task.hidden > 0); heroes agency "
                "score explains linear models only, and a score without its reasons is not "
                "shown. Ask the consortium for a linear release (task.hidden=0, the "
                "default).")
        weights = linear.weight.detach().numpy()[0].astype(np.float64)
        return Explainer(self.featurizer, weights, float(linear.bias.detach().numpy()[0]))
