"""Per-agency calibration of a released model's probabilities (Platt scaling), fitted locally.

A released model's sigmoid output reflects the pooled label mix of every agency, under DP
noise; an agency whose base rate is 2% and one whose base rate is 10% should not read the
same number the same way. Each agency can fit ``p = sigmoid(a * logit + b)`` on its own
labelled export (its training split: labels it already has, which never leave the node),
once per model version. The fit is stored in ``STATE_DIR/calibration/<model version>.json``
and used by every later ``heroes agency score`` with that model.

Platt's smoothed targets ((N+ + 1)/(N+ + 2) for positives, 1/(N- + 2) for negatives) keep
the fit finite when a split is small or perfectly separated.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from federation.errors import DataError, Rule
from federation.files import write_atomic

CALIBRATION_DIR = "calibration"


@dataclass(frozen=True)
class Calibration:
    a: float
    b: float
    method: str  # "platt" or "none"
    source: str  # what it was fitted on, e.g. "es-police train split (2,192 adverts)"
    examples: int
    positives: int
    fitted_at: str

    def describe(self) -> str:
        if self.method == "none":
            return "none: the model's own sigmoid output (not calibrated for this agency)"
        return f"Platt scaling fitted on {self.source}, {self.fitted_at}"


NONE = Calibration(1.0, 0.0, "none", "", 0, 0, "")


def fit_platt(logits: np.ndarray, labels: np.ndarray, *, iterations: int = 100
              ) -> tuple[float, float]:
    """Maximum-likelihood (a, b) for sigmoid(a * logit + b) on Platt's smoothed targets."""
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if z.size != y.size or z.size == 0:
        raise ValueError(f"{z.size} logits and {y.size} labels: need as many, at least one")
    pos = float(y.sum())
    neg = float(y.size - pos)
    t = np.where(y > 0.5, (pos + 1.0) / (pos + 2.0), 1.0 / (neg + 2.0))
    a, b = 1.0, 0.0

    def loss(a: float, b: float) -> float:
        s = a * z + b
        return float(np.sum(np.logaddexp(0.0, s) - t * s))

    current = loss(a, b)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a * z + b)))
        g = np.array([np.sum((p - t) * z), np.sum(p - t)])
        w = p * (1.0 - p)
        h = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]])
        h += 1e-9 * np.eye(2)
        step = np.linalg.solve(h, g)
        scale = 1.0
        while scale > 1e-8:  # backtracking: Newton on a convex loss, kept monotone
            na, nb = a - scale * step[0], b - scale * step[1]
            new = loss(na, nb)
            if new <= current:
                break
            scale /= 2.0
        if scale <= 1e-8:
            break
        a, b, previous, current = na, nb, current, new
        if previous - current < 1e-12 * max(1.0, abs(previous)):
            break
    return a, b


def path_for(state_dir: Path, model_version: str) -> Path:
    return state_dir / CALIBRATION_DIR / f"{model_version}.json"


def save(state_dir: Path, model_version: str, cal: Calibration) -> Path:
    path = path_for(state_dir, model_version)
    write_atomic(path, (json.dumps(asdict(cal), indent=2) + "\n").encode("utf-8"))  # 0600
    return path


def load(state_dir: Path, model_version: str) -> Calibration:
    """This agency's calibration for the model version, or NONE if it has not fitted one."""
    path = path_for(state_dir, model_version)
    if not path.is_file():
        return NONE
    try:
        cal = Calibration(**json.loads(path.read_text(encoding="utf-8")))
    except (TypeError, ValueError) as exc:
        raise DataError(Rule("unreadable calibration ({kind})",
                             "delete it and fit again with --calibrate-with",
                             ("TypeError", "ValueError", "JSONDecodeError")),
                        file=path, kind=type(exc).__name__) from None
    if not (math.isfinite(cal.a) and math.isfinite(cal.b)):
        raise DataError(Rule("calibration parameters are not finite",
                             "delete it and fit again with --calibrate-with"), file=path)
    return cal


def fitted(logits: np.ndarray, labels: np.ndarray, *, source: str) -> Calibration:
    a, b = fit_platt(logits, labels)
    return Calibration(a=a, b=b, method="platt", source=source, examples=int(labels.size),
                       positives=int(np.sum(labels)),
                       fitted_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
