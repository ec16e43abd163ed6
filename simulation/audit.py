"""Empirical privacy audit: canary adverts, a membership-inference test, an epsilon floor.

``heroes simulate audit.enabled=true`` crafts ``audit.canaries`` canary adverts, plants a
random half of them (chosen with the run's seed) in one agency's training export before
the federation starts, and keeps the other half out. After the run it scores every
canary with the final global model and asks, for every threshold, how well "score above
the threshold" tells planted from held-out canaries. DP at (epsilon, delta) for one record
implies TPR <= e^epsilon * FPR + delta for any such test, so

    epsilon >= log((TPR_low - delta) / FPR_high)

where TPR_low and FPR_high are one-sided Clopper-Pearson bounds (Jagielski et al. 2020,
Nasr et al. 2021). The reported lower bound is the largest over all thresholds, with the
confidence level split (Bonferroni) over every threshold tried and over the two bounds, so
picking the best threshold after seeing the scores does not inflate it.

Honest limits: with about a hundred canaries per side and one run the bound is loose (at
most about 2.4 at 95% even with perfect separation), so it can catch a gross failure such
as training without noise while claiming a small epsilon, never prove a claim right. The
canaries share one run, so the trials are not independent draws of the DP game; Steinke,
Nasr and Jagielski (2023) show random per-canary inclusion, as here, gives bounds of this
kind from one run, but their exact analysis is not what is computed.

Canaries are built to be as detectable as the threat model allows (the auditor knows
everything but which canaries were planted, as DP assumes): each is one CJK ideograph that
no training advert contains, whose hashed features fall only in the least-used quarter of
feature buckets and in no other canary's bucket, labelled as positive (the highest level of
the agency's scheme) although it carries no risk indicator. A member's score is the final
model's logit minus the initial model's (known to every agency: seeded by train.seed).

``audit.break_noise_for_testing=true`` is a test-only switch that proves the audit can fail
a run: the simulated agencies then train with noise multiplier 0 while their ledgers and
replies report the planned noise and epsilon. It exists only in this simulation module (the
ClientApp a node runs has no such switch), prints a warning, and marks the summary.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from federation.config import RunSettings
from federation.data import load_agency
from federation.errors import ConfigError
from federation.schema import LABEL_SCHEMES
from federation.tasks import Task, get_task
from simulation.generator import FederationManifest

#: Candidate canary tokens: the CJK Unified Ideographs block (none occur in the synthetic
#: adverts, which are in Spanish, Portuguese and English).
CANDIDATES = range(0x4E00, 0xA000)

BROKEN_WARNING = (
    "WARNING: audit.break_noise_for_testing=true -- the simulated agencies train WITHOUT "
    "DP noise while reporting the planned epsilon. This run's privacy claims are FALSE; it "
    "exists only to test that the audit catches such a run."
)


def _positive_label(scheme_name: str) -> int:
    """The scheme's highest level: the strongest positive label a canary can carry."""
    return max(LABEL_SCHEMES[scheme_name].values)


def craft_canaries(task: Task, train_texts: list[str], n: int, seed: int) -> list[str]:
    """``n`` single-ideograph canaries in the least-used feature buckets, none sharing one."""
    feats = task.featurize(train_texts)
    width = feats.width
    usage = np.zeros(width)
    np.add.at(usage, feats.indices, np.abs(feats.values))
    rare = usage <= np.quantile(usage, 0.25)
    seen = set("".join(train_texts))
    order = np.random.default_rng([seed, 8]).permutation(len(CANDIDATES))
    chars = [chr(CANDIDATES[i]) for i in order if chr(CANDIDATES[i]) not in seen]
    cand = task.featurize(chars)
    used: set[int] = set()
    out: list[str] = []
    for i, c in enumerate(chars):
        buckets = cand.indices[cand.indptr[i]:cand.indptr[i + 1]].tolist()
        if buckets and all(rare[b] for b in buckets) and not used.intersection(buckets):
            used.update(buckets)
            out.append(c)
            if len(out) == n:
                return out
    raise ConfigError([f"audit.canaries={n}: only {len(out)} canaries fit in distinct rarely "
                       f"used buckets of {width}; use fewer canaries (e.g. 100) or more "
                       "task.num_buckets"], source="audit")


def _append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append canary rows to an export file in its own format (CSV or JSONL)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        extra = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    elif path.suffix == ".csv":
        header = next(csv.reader(io.StringIO(text)))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n",
                                extrasaction="ignore")
        for r in rows:
            writer.writerow({k: ("true" if v is True else v) for k, v in r.items()})
        extra = buf.getvalue()
    else:
        raise ConfigError([f"the audit plants canaries in CSV or JSONL exports; "
                           f"{path.name} is neither"], source="audit")
    if text and not text.endswith("\n"):
        text += "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + extra, encoding="utf-8")
    tmp.replace(path)


@dataclass(frozen=True)
class Audit:
    agency: str
    texts: tuple[str, ...]
    planted: np.ndarray  # bool per canary
    confidence: float
    broken: bool
    task: Task
    settings: RunSettings

    def client_app(self) -> Any:
        """The ClientApp for the simulation: the node's own, or the test-only broken one."""
        if not self.broken:
            return None
        from simulation._audit_broken_client import app

        return app

    def scores(self, model: nn.Module) -> np.ndarray:
        torch.manual_seed(self.settings.train.seed)  # the ServerApp's initial model
        initial = self.task.build_model()
        x = torch.from_numpy(self.task.featurize(list(self.texts)).dense())
        with torch.no_grad():
            out = (model(x) - initial(x)).reshape(-1).double().numpy()
        return np.asarray(out, dtype=np.float64)

    def evaluate(self, model: nn.Module, agency_table: list[dict[str, Any]]) -> dict[str, Any]:
        """The membership test on the final model and the epsilon lower bound."""
        row = next(r for r in agency_table if r["agency"] == self.agency)
        private = self.settings.privacy.enabled
        claimed = row["epsilon"] if private else math.inf
        delta = row["delta"] if private else 0.0
        s = self.scores(model)
        result = epsilon_lower_bound(s[self.planted], s[~self.planted], delta=delta or 0.0,
                                     confidence=self.confidence)
        from federation import metrics

        result.update({
            "agency": self.agency,
            "claimed_epsilon": claimed,
            "claimed_delta": delta,
            "claim": ("cumulative epsilon of the planting agency's dataset (its ledger), per "
                      "advert record, at its delta" if private else "no DP (epsilon infinite)"),
            "membership_roc_auc": metrics.roc_auc(self.planted.astype(float), s),
            "planted": int(self.planted.sum()),
            "held_out": int((~self.planted).sum()),
            "break_noise_for_testing": self.broken,
            "caught": bool(result["epsilon_lower_bound"] > claimed),
        })
        return result


def plant_canaries(cfg: DictConfig, manifest: FederationManifest, settings: RunSettings,
                   audit_dir: Path, *, seed: int) -> Audit:
    """Craft canaries, plant a random half in the chosen agency's training export."""
    problems = []
    n = int(cfg.canaries)
    if n < 4 or n % 2:
        problems.append(f"audit.canaries={n} must be an even number >= 4 (half are planted)")
    confidence = float(cfg.confidence)
    if not 0.5 <= confidence < 1:
        problems.append(f"audit.confidence={confidence} must be in [0.5, 1), e.g. 0.95")
    broken = cfg.break_noise_for_testing
    if not isinstance(broken, bool):
        problems.append(f"audit.break_noise_for_testing={broken!r} must be true or false")
    if broken and not settings.privacy.enabled:
        problems.append("audit.break_noise_for_testing=true needs privacy.enabled=true "
                        "(it removes the noise a DP run claims)")
    agency = cfg.agency if cfg.agency is not None else max(
        manifest.agencies, key=lambda a: (manifest.counts[a]["train"], a))
    if agency not in manifest.agencies:
        problems.append(f"audit.agency={agency!r} is not in the federation "
                        f"{list(manifest.agencies)}")
    if problems:
        raise ConfigError(problems, source="audit settings")
    if broken:
        print(BROKEN_WARNING, file=sys.stderr, flush=True)
        print(BROKEN_WARNING, flush=True)
    task = get_task(settings.task_name, settings.task_params)
    texts: list[str] = []
    for a in manifest.agencies:
        data = load_agency(manifest.root / "agencies" / a)
        texts.extend(data.train.texts)
    canaries = craft_canaries(task, texts, n, seed)
    planted = np.zeros(n, dtype=bool)
    planted[np.random.default_rng([seed, 9]).permutation(n)[: n // 2]] = True
    agency_dir = manifest.root / "agencies" / str(agency)
    man = json.loads((agency_dir / "manifest.json").read_text(encoding="utf-8"))
    train_path = agency_dir / man["train"]
    data = load_agency(agency_dir)
    first = data.train
    label = _positive_label(man["label_scheme"])
    template = _first_row(train_path)
    rows = [{
        **template,
        "advert_id": f"audit-canary-{i:05d}",
        "text": canaries[i],
        "label": label,
        "phone": "",
        "synthetic": True,
    } for i in np.flatnonzero(planted)]
    _append_rows(train_path, rows)
    audit_dir.mkdir(parents=True, exist_ok=True)
    (audit_dir / "canaries.jsonl").write_text("".join(
        json.dumps({"canary": i, "text": c, "planted": bool(p)}, ensure_ascii=False) + "\n"
        for i, (c, p) in enumerate(zip(canaries, planted, strict=True))), encoding="utf-8")
    print(f"audit: {int(planted.sum())} canary adverts planted in {agency}'s training export "
          f"({len(first)} adverts), {int((~planted).sum())} held out", flush=True)
    return Audit(agency=str(agency), texts=tuple(canaries), planted=planted,
                 confidence=confidence, broken=bool(broken), task=task, settings=settings)


def _first_row(path: Path) -> dict[str, Any]:
    """Columns other than text, label and id copied from the export's first row."""
    with path.open(encoding="utf-8") as fh:
        if path.suffix == ".jsonl":
            row: Mapping[str, Any] = json.loads(fh.readline())
        else:
            row = next(csv.DictReader(fh))
    return {k: v for k, v in row.items() if k not in ("text", "label", "advert_id")}


def _clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """One-sided (lower, upper) Clopper-Pearson bounds, each at level 1 - alpha."""
    from scipy import stats

    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha, k + 1, n - k))
    return lo, hi


def epsilon_lower_bound(members: np.ndarray, non_members: np.ndarray, *, delta: float,
                        confidence: float) -> dict[str, Any]:
    """The largest epsilon any threshold test proves at ``confidence`` (see module doc)."""
    cuts = np.unique(np.concatenate([members, non_members]))
    alpha = (1 - confidence) / (2 * (cuts.size + 1))
    best: dict[str, Any] = {"epsilon_lower_bound": 0.0, "threshold": None, "tpr": None,
                            "fpr": None, "tpr_low": None, "fpr_high": None}
    n1, n0 = members.size, non_members.size
    for t in cuts:
        tp = int((members >= t).sum())
        fp = int((non_members >= t).sum())
        tpr_lo, _ = _clopper_pearson(tp, n1, alpha)
        _, fpr_hi = _clopper_pearson(fp, n0, alpha)
        if tpr_lo - delta <= 0:
            continue
        eps = math.log((tpr_lo - delta) / fpr_hi)
        if eps > best["epsilon_lower_bound"]:
            best = {"epsilon_lower_bound": eps, "threshold": float(t), "tpr": tp / n1,
                    "fpr": fp / n0, "tpr_low": tpr_lo, "fpr_high": fpr_hi}
    best["confidence"] = confidence
    best["thresholds_tried"] = int(cuts.size)
    best["method"] = ("max over thresholds of log((TPR_low - delta) / FPR_high), one-sided "
                      "Clopper-Pearson bounds, Bonferroni over thresholds and both bounds")
    return best


def render(audit: Mapping[str, Any]) -> str:
    claimed = audit["claimed_epsilon"]
    claim = ("no DP" if claimed is None or math.isinf(claimed)
             else f"{claimed:.2f} (delta {audit['claimed_delta']:g})")
    lines = [f"privacy audit ({audit['agency']}: {audit['planted']} canaries planted, "
             f"{audit['held_out']} held out; membership ROC-AUC "
             f"{audit['membership_roc_auc']:.3f}): empirical epsilon lower bound "
             f"{audit['epsilon_lower_bound']:.2f} at {audit['confidence']:.0%} confidence, "
             f"claimed epsilon {claim}"]
    if audit["caught"]:
        lines.append("AUDIT FAILED: the lower bound exceeds the claimed epsilon")
    elif claimed is None or math.isinf(claimed):
        lines.append("no DP claimed: the bound shows what this non-private run leaks")
    else:
        lines.append("audit passed (a loose test: one run and few canaries cannot prove the "
                     "claim, only catch gross failures)")
    if audit["break_noise_for_testing"]:
        lines.append(BROKEN_WARNING)
    return "\n".join(lines)
