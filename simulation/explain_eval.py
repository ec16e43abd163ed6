"""How often do scoring's explanations point at the generator's ground-truth rationales?

For every test advert of a generated federation that carries at least one inserted
indicator phrase with a positive weight (the generator's ``rationales`` spans), take the
top phrase ``heroes agency score`` shows and check whether it overlaps such a span.

Chance baseline, per advert: a phrase of the same number of words placed uniformly at
random over the advert's runs of adjacent words (the same kind of phrase the explainer
can pick), computed exactly by enumerating every position; averaged like the hit rate.
Category agreement: of the hits, the share whose lexicon category (federation/indicators.py)
names the indicator the generator inserted there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clients.score import top_phrases
from federation.bundle import VerifiedBundle


def _overlaps(a: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    return any(a[0] < e and s < a[1] for s, e in spans)


def _chance(spans: list[tuple[int, int] | None], toks: list[str], words: int,
            targets: list[tuple[int, int]]) -> float | None:
    is_word = [t[0].isalnum() or t[0] == "_" for t in toks]
    windows = []
    for i in range(len(toks) - words + 1):
        if all(is_word[i:i + words]):
            first, last = spans[i], spans[i + words - 1]
            if first is None or last is None:
                return None
            windows.append((first[0], last[1]))
    if not windows:
        return None
    return sum(_overlaps(w, targets) for w in windows) / len(windows)


def rationale_hit_rate(bundle: VerifiedBundle, data_root: Path) -> dict[str, Any]:
    """Top-phrase hit rate against ground-truth rationale spans, next to chance."""
    task, model = bundle.load_model()
    explainer = task.explainer(model)
    agencies = json.loads((data_root / "federation.json").read_text())["agencies"]
    hits = evaluated = no_phrase = category_agree = 0
    chance_sum = 0.0
    for agency in agencies:
        truth = {}
        for line in (data_root / "ground_truth" / f"{agency}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec["split"] == "test":
                truth[rec["advert_id"]] = rec["rationales"]
        table = task.load(data_root / "agencies" / agency).test
        for advert_id, text in zip(table.ids, task.records(table), strict=True):
            rationales = [r for r in truth.get(advert_id, []) if r["weight"] > 0]
            if not rationales:
                continue
            targets = [(r["start"], r["end"]) for r in rationales]
            e = explainer.explain(text)
            toks, spans = e.units, e.spans
            phrases = top_phrases(text, toks, spans, e.shares)
            if not phrases or phrases[0].start is None or phrases[0].end is None:
                no_phrase += 1
                continue
            top = phrases[0]
            assert top.start is not None and top.end is not None
            words = len(explainer.explain(top.text).units)
            chance = _chance(spans, toks, words, targets)
            if chance is None:
                no_phrase += 1
                continue
            evaluated += 1
            chance_sum += chance
            hit = [r for r in rationales if top.start < r["end"] and r["start"] < top.end]
            if hit:
                hits += 1
                category_agree += any(r["indicator"] == top.category for r in hit)
    return {
        "adverts_with_rationales": evaluated + no_phrase,
        "adverts_evaluated": evaluated,
        "adverts_without_a_positive_phrase": no_phrase,
        "top_phrase_hit_rate": hits / evaluated if evaluated else float("nan"),
        "chance_hit_rate": chance_sum / evaluated if evaluated else float("nan"),
        "category_agreement_of_hits": category_agree / hits if hits else float("nan"),
    }


def message_hit_rate(task: Any, model: Any, data_root: Path) -> dict[str, Any]:
    """Conversations: how often the message with the largest share of the score is one the
    generator's ground truth names as carrying the signal (``rationale_messages`` with a
    positive weight), next to chance.

    Every test conversation with at least one such message is evaluated. Chance, per
    conversation: the share of its messages that are rationale messages (a message picked
    uniformly at random); averaged like the hit rate. A conversation whose shares are all
    at most 0 (nothing raised its score) counts as a miss, never as skipped."""
    explainer = task.explainer(model)
    agencies = json.loads((data_root / "federation.json").read_text())["agencies"]
    hits = evaluated = 0
    chance_sum = 0.0
    for agency in agencies:
        truth: dict[str, set[int]] = {}
        for line in (data_root / "ground_truth" / f"{agency}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec["split"] == "test":
                truth[rec["conversation_id"]] = {int(m["index"]) for m in
                                                 rec["rationale_messages"] if m["weight"] > 0}
        table = task.load(data_root / "agencies" / agency).test
        for cid, conversation in zip(table.ids, task.records(table), strict=True):
            targets = truth.get(cid, set())
            if not targets:
                continue
            shares = explainer.explain(conversation).shares
            evaluated += 1
            chance_sum += len(targets) / len(conversation)
            top = int(shares.argmax())
            hits += bool(shares[top] > 0 and top in targets)
    return {
        "conversations_evaluated": evaluated,
        "top_message_hit_rate": hits / evaluated if evaluated else float("nan"),
        "chance_hit_rate": chance_sum / evaluated if evaluated else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m simulation.explain_eval BUNDLE DATA_ROOT CONSORTIUM_PUB``"""
    import sys

    from federation.bundle import verify_bundle
    from federation.signing import load_public_key

    args = sys.argv[1:] if argv is None else argv
    bundle = verify_bundle(load_public_key(Path(args[2])), Path(args[0]))
    task, model = bundle.load_model()
    report = (rationale_hit_rate(bundle, Path(args[1])) if task.name == "advert-risk"
              else message_hit_rate(task, model, Path(args[1])))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def calibration_report(bundle: VerifiedBundle, data_root: Path, *, bins: int = 10
                       ) -> dict[str, dict[str, float]]:
    """Per agency: Brier and expected calibration error on its test split, with the model's
    own sigmoid and with Platt scaling fitted on the agency's training split."""
    import numpy as np

    from clients.score import fit_calibration
    from federation import metrics

    task, model = bundle.load_model()
    out: dict[str, dict[str, float]] = {}
    for agency in json.loads((data_root / "federation.json").read_text())["agencies"]:
        data_dir = data_root / "agencies" / agency
        cal = fit_calibration(bundle, data_dir)
        test = task.load(data_dir).test
        import torch

        with torch.no_grad():
            z = model(torch.from_numpy(task.featurize_table(test).dense())).numpy()
        y = np.asarray(test.positive, dtype=np.float64)
        row: dict[str, float] = {"test_adverts": float(y.size),
                                 "test_positive_rate": float(y.mean())}
        for name, p in (("model", 1 / (1 + np.exp(-z))),
                        ("platt", 1 / (1 + np.exp(-(cal.a * z + cal.b))))):
            edges = np.minimum((p * bins).astype(int), bins - 1)
            ece = sum(abs(p[edges == k].mean() - y[edges == k].mean()) * np.sum(edges == k)
                      for k in range(bins) if np.any(edges == k)) / y.size
            row[f"{name}_brier"] = metrics.summary(y, p, k=10)["brier"]
            row[f"{name}_ece"] = float(ece)
            row[f"{name}_mean_probability"] = float(p.mean())
        out[agency] = row
    return out
