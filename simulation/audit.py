"""Empirical privacy audit: an epsilon lower bound beside each audited agency's claim.

Two modes (``audit.mode``), both off unless ``audit.enabled=true``:

``whitebox`` (the default mode): the audited agency (``audit.agency``: null = the largest,
an agency id, or ``all``) runs, inside each of its DP rounds, a side copy of its own
training with Dirac gradient canaries (federation.audit: Nasr et al. 2023, half of them
members, each entering the clipped sum with the record sampling rate) and scores them on
every step's noisy update, as only the agency itself can see them. By default
(``audit.gradient_canaries=auto``) there are as many canaries as let one run certify the
most at the run's delta (58,300 at delta 1e-5): one on every model coordinate and the rest
on audit-only coordinates of the side copy, which no record touches and which the DP
optimiser noises like the model's. After the run the one-run theorem of Steinke, Nasr and
Jagielski (2023) turns the guesses into an epsilon lower bound at ``audit.confidence``
(split evenly over the audited agencies), set beside the epsilon the agency claims for
this run at the run's delta. The side copy is thrown away: nothing of it reaches the
federation, and only the bound and the claim leave the agency's state folder (into the
summary). It catches a run without noise that claims epsilon 3 or 8 (bound 8.17 at delta
1e-5 with every guess right, 8.02 with three wrong; with the default plan about one such
run in 25 claiming 8 loses four guesses to members never sampled and is missed); one run
never certifies more than about 8.2 at delta 1e-5, so a larger claim cannot be tested
(reported INCONCLUSIVE). An honest run's bound stays below its claim with probability at
least the confidence (in practice far below: about 0.2, 0.5 and 1.0 for claims of 1, 3
and 8).

``blackbox``: canary adverts planted in one agency's training export and a
membership-inference test on the final global model (what anyone holding the model could
run). ``heroes simulate audit.enabled=true audit.mode=blackbox`` crafts ``audit.canaries``
canary adverts, plants a random half of them (chosen with the run's seed) in one agency's
training export before the federation starts, and keeps the other half out. After the run
it scores every canary with the final global model and asks, for every threshold, how well
"score above the threshold" tells planted from held-out canaries. DP at (epsilon, delta)
for one record implies TPR <= e^epsilon * FPR + delta for any such test, so

    epsilon >= log((TPR_low - delta) / FPR_high)

where TPR_low and FPR_high are one-sided Clopper-Pearson bounds (Jagielski et al. 2020,
Nasr et al. 2021). The reported lower bound is the largest over all thresholds, with the
confidence level split (Bonferroni) over every threshold tried and over the two bounds, so
picking the best threshold after seeing the scores does not inflate it.

Honest limits of the black-box mode: with about a hundred canaries per side and one run
the bound is loose (at most about 2.4 at 95% even with perfect separation), so it cannot
fail a run at the default budget (epsilon 3): a run without any noise scored 1.95. It
catches only a claim below about 2; use the white-box mode to audit a claim. The canaries
share one run, so the trials are not independent draws of the DP game.

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

from federation.audit import MAX_GRADIENT_CANARIES
from federation.config import RunSettings
from federation.data import load_agency
from federation.errors import ConfigError
from federation.schema import LABEL_SCHEMES
from federation.tasks import Task, get_task
from simulation.generator import FederationManifest
from simulation.units import per_unit

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


UNIT = "one advert record in one agency's training export"
MODES = ("whitebox", "blackbox")


@dataclass(frozen=True)
class AuditSettings:
    """The ``audit:`` section, validated (every problem listed at once)."""

    mode: str
    agencies: tuple[str, ...]
    confidence: float
    broken: bool
    canaries: int
    gradient_canaries: int | str | None  # "auto", None (one per model coordinate) or a count

    @classmethod
    def from_config(cls, cfg: DictConfig, manifest: FederationManifest,
                    settings: RunSettings) -> AuditSettings:
        problems = []
        mode = str(cfg.mode)
        if mode not in MODES:
            problems.append(f"audit.mode={mode!r} must be one of {list(MODES)}")
        n = int(cfg.canaries)
        if mode == "blackbox" and (n < 4 or n % 2):
            problems.append(f"audit.canaries={n} must be an even number >= 4 (half are "
                            "planted)")
        g = cfg.gradient_canaries
        if g != "auto" and g is not None and (isinstance(g, bool) or not isinstance(g, int)
                                              or not 8 <= g <= MAX_GRADIENT_CANARIES):
            problems.append(f"audit.gradient_canaries={g!r} must be auto (the number that "
                            "certifies the most), null (one per model coordinate) or a "
                            f"whole number in [8, {MAX_GRADIENT_CANARIES}]")
        confidence = float(cfg.confidence)
        if not 0.5 <= confidence < 1:
            problems.append(f"audit.confidence={confidence} must be in [0.5, 1), e.g. 0.95")
        broken = cfg.break_noise_for_testing
        if not isinstance(broken, bool):
            problems.append(f"audit.break_noise_for_testing={broken!r} must be true or false")
        if broken and not settings.privacy.enabled:
            problems.append("audit.break_noise_for_testing=true needs privacy.enabled=true "
                            "(it removes the noise a DP run claims)")
        names = list(manifest.agencies)
        if cfg.agency is None:
            agencies = [max(names, key=lambda a: (manifest.counts[a]["train"], a))]
        elif str(cfg.agency) == "all" and mode == "whitebox":
            agencies = names
        else:
            agencies = [str(cfg.agency)]
            if agencies[0] not in names:
                problems.append(f"audit.agency={cfg.agency!r} is not in the federation "
                                f"{names}" + (" (all: whitebox mode only)"
                                              if str(cfg.agency) == "all" else ""))
        if problems:
            raise ConfigError(problems, source="audit settings")
        return cls(mode=mode, agencies=tuple(agencies), confidence=confidence,
                   broken=bool(broken), canaries=n, gradient_canaries=g)


def prepare_audit(cfg: DictConfig, manifest: FederationManifest, settings: RunSettings,
                  audit_dir: Path, *, state_root: Path, seed: int) -> Audit | WhiteboxAudit:
    """Before the federation starts: plant canary adverts (blackbox) or draw each audited
    agency's gradient canaries into its own state folder (whitebox)."""
    a = AuditSettings.from_config(cfg, manifest, settings)
    if a.broken:
        print(BROKEN_WARNING, file=sys.stderr, flush=True)
        print(BROKEN_WARNING, flush=True)
    if a.mode == "blackbox":
        if settings.task_name != "advert-risk":
            raise ConfigError([f"audit.mode=blackbox plants canary adverts; task "
                               f"{settings.task_name!r} has no canary records. Fix: "
                               "audit.mode=whitebox (it audits any task)"], source="audit")
        return plant_canaries(a, manifest, settings, audit_dir, seed=seed)
    if not settings.privacy.enabled:
        print(f"audit (white-box): {NO_CLAIM}", flush=True)
        return WhiteboxAudit(audit=a, state_root=state_root, settings=settings, seed=seed)
    return draw_gradient_canaries(a, settings, state_root, seed=seed)


INCONCLUSIVE = ("AUDIT INCONCLUSIVE: the claim is at or above the most this design can "
                "certify (the 'at most' figure), so no run, however much it leaks, could "
                "contradict it")


def _ceiling_note(row: Mapping[str, Any]) -> str:
    """Why the design certifies no more, and what (if anything) would."""
    if row["non_member_guesses"] == 0:
        return ("only 'member' guesses were made (the plan's few steps leave members that "
                "Poisson sampling never picks); more steps per run certify more")
    if row["canaries"] < row["auto_canaries"]:
        return (f"{row['canaries']} canaries; audit.gradient_canaries=auto "
                f"({row['auto_canaries']}) certifies more")
    return ("that is about the most one run can certify at this delta and confidence "
            "(the 2 m delta term of the one-run theorem), so one run cannot test this claim")
NO_CLAIM = ("no DP claimed (privacy.enabled=false): there are no DP-SGD steps to observe and "
            "no claim to test; audit.mode=blackbox measures what a non-private run leaks")


# --------------------------------------------------------------------------- white-box

def _unit(settings: RunSettings) -> str:
    """The task's unit of privacy: what every epsilon of the audit is about."""
    return get_task(settings.task_name, settings.task_params).privacy_unit


def _claimed(row: Mapping[str, Any] | None, settings: RunSettings) -> dict[str, Any]:
    """What the agency claims for this run: its run epsilon at the run's delta (the
    mechanism the audit observed), with its ledger epsilon beside it."""
    row = row or {}
    return {"claimed_epsilon": row.get("run_epsilon"),
            "claimed_delta": settings.privacy.target_delta,
            "ledger_epsilon": row.get("epsilon"), "ledger_delta": row.get("delta"),
            "unit": _unit(settings)}


@dataclass(frozen=True)
class WhiteboxAudit:
    audit: AuditSettings
    state_root: Path
    settings: RunSettings
    seed: int

    @property
    def per_agency_confidence(self) -> float:
        """The confidence of each agency's bound: ``audit.confidence`` for the whole family
        of audited agencies (Bonferroni)."""
        return 1.0 - (1.0 - self.audit.confidence) / len(self.audit.agencies)

    def client_app(self) -> Any:
        """The simulation's audited ClientApp: it finds the canary design in the audited
        agencies' state folders (and, test only, removes the noise)."""
        from simulation._audit_broken_client import AuditClientApp

        return AuditClientApp(noiseless=self.audit.broken)

    def evaluate(self, model: nn.Module, agency_table: list[dict[str, Any]]
                 ) -> dict[str, Any]:
        """Each audited agency's bound beside its claim (``model`` is not used: the
        white-box audit looked at the steps, not at the final model)."""
        from federation.audit import (
            DESIGN_FILE,
            SCORES_FILE,
            Design,
            load_scores,
            one_run_audit,
            optimal_canaries,
        )
        from simulation._audit_broken_client import AUDIT_DIR

        rows = []
        for agency in self.audit.agencies:
            folder = self.state_root / agency / AUDIT_DIR
            row = _claimed(next((r for r in agency_table if r["agency"] == agency), None),
                           self.settings)
            row["agency"] = agency
            if not self.settings.privacy.enabled:
                rows.append({**row, "claimed_epsilon": math.inf, "claimed_delta": None,
                             "epsilon_lower_bound": None, "caught": False,
                             "status": NO_CLAIM})
                continue
            if not (folder / SCORES_FILE).is_file() or row["claimed_epsilon"] is None:
                rows.append({**row, "epsilon_lower_bound": None, "caught": False,
                             "status": "not audited: the agency trained no DP round"})
                continue
            design = Design.load(folder / DESIGN_FILE)
            scores = load_scores(folder / SCORES_FILE)
            result = one_run_audit(scores["score"], design.members,
                                   delta=float(row["claimed_delta"]),
                                   confidence=self.per_agency_confidence,
                                   sample_rate=scores["sample_rate"],
                                   steps=scores["planned_steps"], tiebreak_seed=design.seed)
            result["auto_canaries"] = optimal_canaries(delta=float(row["claimed_delta"]),
                                                       confidence=self.per_agency_confidence)
            rows.append({**row, **result, "steps_observed": scores["steps"],
                         "planned_steps": scores["planned_steps"],
                         "rounds_observed": scores["rounds"],
                         "sample_rate": scores["sample_rate"],
                         "claimed_noise_multiplier": scores["noise_multiplier"],
                         "status": "audited",
                         "caught": bool(result["epsilon_lower_bound"]
                                        > float(row["claimed_epsilon"])),
                         # every guess right: the bound is at the ceiling of this design
                         # and says nothing about how far past it the run leaks
                         "saturated": bool(result["guesses"] > 0
                                           and result["correct"] == result["guesses"]),
                         # a claim at or above that ceiling: no run could contradict it
                         "untestable": bool(result["best_possible_bound"]
                                            <= float(row["claimed_epsilon"]))})
            if rows[-1]["untestable"]:
                rows[-1]["ceiling_note"] = _ceiling_note(rows[-1])
        audited = [r for r in rows if r["epsilon_lower_bound"] is not None]
        # the sweep's columns: the audited agency closest to (or furthest past) its claim
        top = max(audited, key=lambda r: r["epsilon_lower_bound"] - r["claimed_epsilon"],
                  default=rows[0])
        return {
            "mode": "whitebox",
            "agency": top["agency"],
            "epsilon_lower_bound": top["epsilon_lower_bound"],
            "claimed_epsilon": top["claimed_epsilon"],
            "claimed_delta": top["claimed_delta"],
            "caught": any(r["caught"] for r in rows),
            "inconclusive": any(r.get("untestable") and not r["caught"] for r in rows),
            "confidence": self.audit.confidence,
            "per_agency_confidence": self.per_agency_confidence,
            "unit": _unit(self.settings),
            "claim": ("each audited agency's epsilon for this run (all its DP rounds), per "
                      f"{_unit(self.settings)}, at the run's delta"),
            "break_noise_for_testing": self.audit.broken,
            "agencies": rows,
            "method": WHITEBOX_METHOD,
        }


WHITEBOX_METHOD = (
    "white-box Dirac gradient canaries (Nasr et al. 2023) in a side copy of each DP round of "
    "the audited agency, on the model's coordinates and on audit-only coordinates that the DP "
    "optimiser noises like the model's, each a member with probability 1/2 and then sampled "
    "like a record; score: the log-likelihood ratio of "
    "membership summed over every step's noisy update; guesses: the k highest 'member', the k "
    "lowest 'non-member', k = m/2 - 2 sqrt(m) fixed before the run (only 'member' guesses "
    "when the plan leaves so many members never sampled that they alone certify more); "
    "bound: the largest "
    "epsilon the one-run (epsilon, delta) test of Steinke, Nasr and Jagielski (2023) rejects")


def draw_gradient_canaries(a: AuditSettings, settings: RunSettings, state_root: Path, *,
                           seed: int) -> WhiteboxAudit:
    """One canary design per audited agency, in that agency's own state folder."""
    from federation.audit import DESIGN_FILE, Design, canary_count
    from simulation._audit_broken_client import AUDIT_DIR

    task = get_task(settings.task_name, settings.task_params)
    num_params = sum(p.numel() for p in task.build_model().parameters())
    audit = WhiteboxAudit(audit=a, state_root=state_root, settings=settings, seed=seed)
    delta = settings.privacy.target_delta
    if delta is None:
        raise ConfigError(["audit.mode=whitebox tests a claim at the run's delta: set "
                           "privacy.target_delta (e.g. 1e-5)"], source="audit settings")
    m = canary_count(a.gradient_canaries, num_params=num_params, delta=delta,
                     confidence=audit.per_agency_confidence)
    for i, agency in enumerate(a.agencies):
        agency_seed = int(np.random.SeedSequence([seed, 12, i]).generate_state(1)[0])
        design = Design.draw(num_params=num_params, canaries=m, seed=agency_seed)
        design.save(state_root / agency / AUDIT_DIR / DESIGN_FILE)
        print(f"audit (white-box): {design.coordinates.size} Dirac gradient canaries "
              f"({int(design.members.sum())} members; "
              f"{design.coordinates.size - design.audit_coordinates} on model coordinates, "
              f"{design.audit_coordinates} on audit-only ones) in a side copy of {agency}'s "
              "DP rounds", flush=True)
    return audit


# --------------------------------------------------------------------------- black-box

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
        from simulation._audit_broken_client import AuditClientApp

        return AuditClientApp(noiseless=True)

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
            "mode": "blackbox",
            "agency": self.agency,
            "claimed_epsilon": claimed,
            "claimed_delta": delta,
            "unit": UNIT,
            "claim": ("cumulative epsilon of the planting agency's dataset (its ledger), per "
                      "advert record, at its delta" if private else "no DP (epsilon infinite)"),
            "membership_roc_auc": metrics.roc_auc(self.planted.astype(float), s),
            "planted": int(self.planted.sum()),
            "held_out": int((~self.planted).sum()),
            "break_noise_for_testing": self.broken,
            "caught": bool(result["epsilon_lower_bound"] > claimed),
        })
        result["agencies"] = [{k: result[k] for k in (
            "agency", "claimed_epsilon", "claimed_delta", "unit", "epsilon_lower_bound",
            "confidence", "caught")} | {"status": "audited"}]
        return result


def plant_canaries(a: AuditSettings, manifest: FederationManifest, settings: RunSettings,
                   audit_dir: Path, *, seed: int) -> Audit:
    """Craft canaries, plant a random half in the chosen agency's training export."""
    n = a.canaries
    agency = a.agencies[0]
    task = get_task(settings.task_name, settings.task_params)
    texts: list[str] = []
    for name in manifest.agencies:
        data = load_agency(manifest.root / "agencies" / name)
        texts.extend(data.train.texts)
    canaries = craft_canaries(task, texts, n, seed)
    planted = np.zeros(n, dtype=bool)
    planted[np.random.default_rng([seed, 9]).permutation(n)[: n // 2]] = True
    agency_dir = manifest.root / "agencies" / str(agency)
    man = json.loads((agency_dir / "manifest.json").read_text(encoding="utf-8"))
    train_path = agency_dir / man["train"]
    first = load_agency(agency_dir).train
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
    print(f"audit (black-box): {int(planted.sum())} canary adverts planted in {agency}'s "
          f"training export ({len(first)} adverts), {int((~planted).sum())} held out",
          flush=True)
    return Audit(agency=str(agency), texts=tuple(canaries), planted=planted,
                 confidence=a.confidence, broken=a.broken, task=task, settings=settings)


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


def _claim_text(claimed: float | None, delta: float | None) -> str:
    if claimed is None:
        return "none (trained no DP round)"
    if math.isinf(claimed):
        return "no DP (epsilon infinite)"
    return f"{claimed:.2f} at delta {delta:g}"


def render(audit: Mapping[str, Any]) -> str:
    """The audit's lines in the end-of-run printout."""
    if audit.get("mode") == "whitebox":
        lines = ["privacy audit (white-box: Dirac gradient canaries in a side copy of each "
                 f"audited agency's DP rounds, one-run bound; {per_unit(audit['unit'])}):"]
        for r in audit["agencies"]:
            if r["epsilon_lower_bound"] is None:
                lines.append(f"  {r['agency']}: {r['status']}")
                continue
            verdict = ("AUDIT FAILED: the lower bound exceeds the claim" if r["caught"]
                       else f"{INCONCLUSIVE}; {r['ceiling_note']}" if r["untestable"]
                       else "not contradicted")
            lines.append(
                f"  {r['agency']}: empirical epsilon lower bound {r['epsilon_lower_bound']:.2f} "
                f"({r['confidence']:.1%} confidence, {r['correct']}/{r['guesses']} guesses "
                f"right, {r['canaries']} canaries; at most {r['best_possible_bound']:.2f} "
                f"here) vs claimed epsilon {_claim_text(r['claimed_epsilon'], r['claimed_delta'])}"
                f" for this run: {verdict}")
        if not audit["caught"] and not audit["inconclusive"] and any(
                r["epsilon_lower_bound"] is not None for r in audit["agencies"]):
            lines.append("audit passed: a lower bound, not an estimate (an honest run's bound "
                         "is far below its claim)")
    else:
        claimed = audit["claimed_epsilon"]
        lines = [f"privacy audit (black-box, {audit['agency']}: {audit['planted']} canaries "
                 f"planted, {audit['held_out']} held out; membership ROC-AUC "
                 f"{audit['membership_roc_auc']:.3f}): empirical epsilon lower bound "
                 f"{audit['epsilon_lower_bound']:.2f} at {audit['confidence']:.0%} confidence, "
                 f"claimed epsilon {_claim_text(claimed, audit['claimed_delta'])} per "
                 f"{audit.get('unit', UNIT)}"]
        if not audit["caught"]:
            lines.append(
                "no DP claimed: the bound shows what this non-private run leaks"
                if claimed is None or math.isinf(claimed) else
                "audit passed (a loose test: one run and few canaries cannot prove the claim, "
                "nor fail one above about 2; audit.mode=whitebox can)")
    if audit["caught"]:
        lines.append("AUDIT FAILED: the lower bound exceeds the claimed epsilon")
    if audit["break_noise_for_testing"]:
        lines.append(BROKEN_WARNING)
    return "\n".join(lines)
