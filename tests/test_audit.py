"""The white-box privacy audit: Dirac gradient canaries in real DP-SGD, the one-run bound.

The estimator is pinned to a literal transcription of Steinke, Nasr and Jagielski's
reference code and to the closed form of pure DP; its validity is checked on randomised
response, the mechanism its theorem is tight for. The canaries run through the project's
own ``train_local`` (real Opacus, real torch) with the default design
(``audit.gradient_canaries=auto``: every model coordinate plus audit-only coordinates that
the DP optimiser noises like the model's): runs without noise that claim epsilon 3 and 8
are caught, honest runs at 1, 3 and 8 are not (several seeds; the DP noise is fresh OS
randomness, so every run is a new draw). One slow test runs ``heroes simulate`` with the
audit on and reads the bound and the claim per agency from the summary and the report.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from federation.audit import (
    DESIGN_FILE,
    MAX_GRADIENT_CANARIES,
    SCORES_FILE,
    Design,
    DiracCanaries,
    canary_count,
    guess_counts,
    load_scores,
    one_run_audit,
    one_run_epsilon_lower_bound,
    one_run_p_value,
    optimal_canaries,
)
from federation.config import PrivacySettings, TrainSettings
from federation.privacy import NoisePlan, plan_noise
from federation.tasks import get_task
from federation.training import observe_steps, train_local
from simulation import preflight
from simulation._audit_broken_client import _train_without_noise, with_whitebox_audit
from tests._heroes import heroes

ROOT = Path(__file__).resolve().parents[1]
POS = ["fotos 100% reales", "we keep your passport", "new girls every week", "young student"]
NEG = ["new in town", "office job with contract", "flat near the metro", "cheap flights"]
DELTA = 1e-5
CLIP = 0.5


# --------------------------------------------------------------------------- the bound

def _paper_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Steinke, Nasr and Jagielski's ``p_value_DP_audit``, transcribed loop for loop."""
    from scipy import stats

    q = 1 / (1 + math.exp(-eps))
    beta = stats.binom.sf(v - 1, r, q)
    alpha = 0.0
    total = 0.0
    for i in range(1, v + 1):
        total = total + stats.binom.pmf(v - i, r, q)
        if total > i * alpha:
            alpha = total / i
    return float(min(beta + alpha * delta * 2 * m, 1))


@pytest.mark.parametrize(("m", "r", "v", "eps", "delta"), [
    (1000, 1000, 1000, 5.0, 1e-5), (1000, 600, 600, 4.0, 1e-5), (1000, 200, 150, 1.0, 1e-5),
    (4097, 3840, 3839, 6.5, 1e-5), (100, 100, 70, 0.5, 0.0), (500, 40, 0, 2.0, 1e-5),
    (8193, 7830, 7828, 7.5, 1e-5),
    # below the mode (alpha is the first term) and far above it (the sum is cut 60 sd
    # below the mode)
    (4097, 3840, 2000, 0.3, 1e-5), (4097, 3840, 3500, 1.0, 1e-3), (2000, 1900, 1890, 9.0, 1e-5)])
def test_p_value_is_the_papers_reference_computation(m: int, r: int, v: int, eps: float,
                                                     delta: float) -> None:
    assert one_run_p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) == pytest.approx(
        _paper_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-15)


def test_all_correct_guesses_without_delta_give_the_closed_form() -> None:
    # Pure DP: P[all r right] <= (e^eps / (1 + e^eps))^r, so the bound solves that = 0.05.
    r = 1000
    q = 0.05 ** (1 / r)
    bound = one_run_epsilon_lower_bound(m=r, r=r, v=r, delta=0.0, confidence=0.95)
    assert bound == pytest.approx(math.log(q / (1 - q)), abs=1e-6)
    assert bound == pytest.approx(5.809, abs=1e-3)
    # delta costs: 2 m delta times the tail term, so perfect guessing certifies less...
    assert one_run_epsilon_lower_bound(m=r, r=r, v=r, delta=1e-5, confidence=0.95) < bound
    # ...and at delta 1e-5 no number of canaries certifies much more than 8.2.
    def ceiling(m: int) -> float:
        k = guess_counts(m, sample_rate=0.1, steps=1000, delta=DELTA, confidence=0.95)[0]
        return one_run_epsilon_lower_bound(m=m, r=2 * k, v=2 * k, delta=DELTA,
                                           confidence=0.95)

    ceilings = [ceiling(m) for m in (4097, 28709, 65537)]
    assert ceilings[0] == pytest.approx(7.045, abs=0.01)  # one per default model coordinate
    assert ceilings[1] == pytest.approx(8.225, abs=0.01)  # about the most one run certifies
    assert ceilings[2] < ceilings[1]


def test_auto_canaries_certify_8_with_three_guesses_wrong() -> None:
    # audit.gradient_canaries=auto: the m at which one run certifies the most with two
    # wrong guesses; within 0.06 of the most it certifies with every guess right (8.22)
    m = optimal_canaries(delta=DELTA, confidence=0.95)
    assert m == pytest.approx(58_300, rel=0.04)
    # the default plan's largest agency: 710 steps at rate 1/71, both kinds of guesses
    k, k_out = guess_counts(m, sample_rate=1 / 71, steps=710, delta=DELTA, confidence=0.95)
    assert k_out == k
    bounds = [one_run_epsilon_lower_bound(m=m, r=2 * k, v=2 * k - wrong, delta=DELTA,
                                          confidence=0.95) for wrong in (0, 3, 4)]
    assert bounds[0] == pytest.approx(8.17, abs=0.01)
    assert bounds[1] > 8.0 > bounds[2]  # a run leaking everything: caught at 8
    assert canary_count("auto", num_params=4097, delta=DELTA, confidence=0.95) == m
    assert canary_count(None, num_params=4097, delta=DELTA, confidence=0.95) == 4097
    assert preflight.MAX_GRADIENT_CANARIES == MAX_GRADIENT_CANARIES


def test_the_bound_holds_for_randomised_response() -> None:
    # Each guess right with probability e^eps / (1 + e^eps): exactly eps-DP, the worst case
    # of the theorem. At 95% the bound may exceed eps in at most about 5% of runs.
    rng = np.random.default_rng(0)
    eps, m, runs = 1.0, 500, 100
    right = rng.binomial(m, 1 / (1 + math.exp(-eps)), size=runs)
    over = sum(one_run_epsilon_lower_bound(m=m, r=m, v=int(v), delta=DELTA, confidence=0.95)
               > eps for v in right)
    assert over <= 0.05 * runs + 3 * math.sqrt(0.05 * 0.95 * runs), over
    assert one_run_epsilon_lower_bound(m=m, r=m, v=int(right.max()), delta=DELTA,
                                       confidence=0.95) > 0.5  # and it is not vacuous


def test_guesses_are_fixed_by_public_quantities() -> None:
    public = {"delta": DELTA, "confidence": 0.95}
    assert guess_counts(4097, sample_rate=1 / 71, steps=710, **public) == (1920, 1920)
    # 16 steps at rate 1/4: about 20 members never sampled; "member" guesses only, 4 sd
    # below the expected number of members ever sampled
    assert guess_counts(4097, sample_rate=0.25, steps=16, **public) == (1899, 0)
    # 600 steps at 1/71: about 6 of 58,000 never sampled; losing 6 non-member guesses
    # still certifies more than member guesses alone
    assert guess_counts(58_000, sample_rate=1 / 71, steps=600, **public) == (28518, 28518)


# --------------------------------------------------------------------------- in DP-SGD

@pytest.fixture(autouse=True)
def _one_torch_thread() -> Any:
    """One intra-op thread, as a node trains (clients/client_app.py): on a shared 2-core
    machine two threads spin against each other, making each small step ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=8)
def _data(buckets: int, hidden: int, n: int = 400) -> tuple[Any, Any, np.ndarray]:
    """A small corpus, featurised once per model shape (the tests only read it)."""
    rng = np.random.default_rng(0)
    y = (rng.random(n) < 0.3).astype(np.float32)
    texts = [" ".join(rng.choice(POS if yi else NEG, 2)) + f" ref {i}" for i, yi in enumerate(y)]
    task = get_task("advert-risk", {"num_buckets": buckets, "hidden": hidden})
    return task, task.featurize(texts), y


#: Noise multipliers that Opacus' RDP calibration (federation.privacy.plan_noise) chooses
#: for 400 records, batch 32 (q = 1/13) and delta 1e-5, by (claim, epochs): pinned, since
#: the calibration costs seconds each. Each test checks the claim they give.
SIGMA = {(1.0, 12): 4.1015625, (3.0, 12): 1.71875, (8.0, 12): 0.9637451171875,
         (8.0, 16): 1.0333251953125, (3.0, 4): 1.260986328125}


def _plan(claim: float, epochs: int) -> NoisePlan:
    return NoisePlan(noise_multiplier=SIGMA[claim, epochs], sample_rate=1 / 13, batch_size=32,
                     steps_per_round=13 * epochs, planned_rounds=1, target_epsilon=claim,
                     target_delta=DELTA, accountant="rdp")


def test_the_pinned_plans_are_the_calibrated_ones() -> None:
    plan = plan_noise(num_records=400, batch_size=32, local_epochs=12, planned_rounds=1,
                      target_epsilon=3.0, target_delta=DELTA, accountant="rdp", where="test")
    assert plan == _plan(3.0, 12)
    for (claim, epochs) in SIGMA:
        assert _plan(claim, epochs).planned_epsilon == pytest.approx(claim, abs=0.01)


def audited_round(*, claim: float, broken: bool, buckets: int = 4096, hidden: int = 0,
                  epochs: int = 12, secure: bool = False, seed: int = 0,
                  canaries: int | str | None = "auto"
                  ) -> tuple[float, DiracCanaries, dict[str, Any]]:
    """One agency's DP-SGD through the project's training code with Dirac canaries as
    ``audit.gradient_canaries`` sets them (the default: auto); ``broken`` is the
    simulation's test-only noiseless training."""
    task, x, y = _data(buckets, hidden)
    plan = _plan(claim, epochs)
    torch.manual_seed(seed)
    model = task.build_model()
    num_params = sum(p.numel() for p in model.parameters())
    design = Design.draw(num_params=num_params, seed=seed, canaries=canary_count(
        canaries, num_params=num_params, delta=DELTA, confidence=0.95))
    observer = DiracCanaries(design=design, max_grad_norm=CLIP, sample_rate=plan.sample_rate,
                             noise_multiplier=plan.noise_multiplier,
                             planned_steps=plan.steps_per_round)
    train = _train_without_noise if broken else train_local
    result = train(model, x, y, train=TrainSettings(batch_size=32, learning_rate=1.0,
                                                    local_epochs=epochs),
                   privacy=PrivacySettings(target_epsilon=claim, target_delta=DELTA,
                                           max_grad_norm=CLIP, secure_mode=secure),
                   plan=plan, observer=observer)
    assert observer.steps == plan.steps_per_round
    assert sum(p.numel() for p in model.parameters()) == num_params  # no audit tensor here
    audit = one_run_audit(observer.score, design.members, delta=DELTA, confidence=0.95,
                          sample_rate=plan.sample_rate, steps=plan.steps_per_round,
                          tiebreak_seed=seed)
    return result.epsilon, observer, audit


def test_a_run_without_noise_claiming_3_is_caught() -> None:
    claimed, canaries, audit = audited_round(claim=3.0, broken=True)
    assert claimed == pytest.approx(3.0, abs=0.02)  # what the broken run reports
    # the default design: every model coordinate plus audit-only ones, about 42,400 in all
    assert canaries.design.num_params == 4097 and canaries.design.audit_coordinates > 30_000
    assert audit["epsilon_lower_bound"] > claimed + 5, audit  # 8.17


def test_a_run_without_noise_claiming_8_is_caught_at_the_default_settings() -> None:
    claimed, _, audit = audited_round(claim=8.0, broken=True)
    assert claimed == pytest.approx(8.0, abs=0.05)
    assert audit["epsilon_lower_bound"] > claimed, audit  # 8.17 with every guess right
    # one canary per model coordinate (4,097, the previous default) cannot certify 8
    k = guess_counts(4097, sample_rate=1 / 13, steps=156, delta=DELTA, confidence=0.95)[0]
    assert one_run_epsilon_lower_bound(m=4097, r=2 * k, v=2 * k, delta=DELTA,
                                       confidence=0.95) < 7.1


@pytest.mark.parametrize("claim", [1.0, 3.0, 8.0])
def test_honest_runs_stay_at_or_below_their_claim(claim: float) -> None:
    for seed in range(3):  # fresh noise each time
        claimed, _, audit = audited_round(claim=claim, broken=False, seed=seed)
        assert claimed <= claim + 1e-9
        assert audit["epsilon_lower_bound"] <= claimed, (seed, audit)
        assert audit["canaries"] > 55_000  # the design that catches a claim of 8


def test_canaries_enter_the_clipped_sum_like_a_record() -> None:
    _, canaries, _ = audited_round(claim=3.0, broken=True)
    members = canaries.design.members
    # a member adds what Opacus' clipping leaves of a record gradient of norm exactly C
    assert canaries.clipped_value == pytest.approx(CLIP * CLIP / (CLIP + 1e-6), rel=1e-12)
    inclusions = canaries.total[members] / (canaries.clipped_value / CLIP)
    # without noise each member step adds exactly that to its coordinate: whole numbers
    assert np.allclose(inclusions, np.round(inclusions), atol=1e-4)
    assert np.all(canaries.total[~members] == 0.0)  # non-members never touch the sum
    # ...and no noise on the audit-only coordinates either: the switch reaches them
    audit_only = np.arange(members.size) >= canaries.design.num_params
    assert np.all(canaries.total[audit_only & ~members] == 0.0)
    # Poisson sampling at the records' rate: the mean inclusions are steps x q
    expected = canaries.steps * canaries.sample_rate
    assert inclusions.mean() == pytest.approx(expected, rel=0.03)


def test_audit_only_coordinates_get_the_models_noise() -> None:
    # Honest run: a non-member's total is the sum of the step noise over its coordinate,
    # N(0, sigma^2 T) in units of C, on the model's coordinates and the audit-only ones
    _, canaries, _ = audited_round(claim=3.0, broken=False, epochs=4)
    design, total = canaries.design, canaries.total
    expected = canaries.noise_multiplier * math.sqrt(canaries.steps)
    audit_only = np.arange(design.members.size) >= design.num_params
    for where in (audit_only, ~audit_only):
        spread = total[where & ~design.members].std()
        assert spread == pytest.approx(expected, rel=0.06), (where.sum(), spread, expected)
        assert abs(total[where & ~design.members].mean()) < 0.1 * expected


def test_audit_only_coordinates_leave_the_records_clipping_unchanged() -> None:
    # Opacus' per-sample clipping over the model's and the audit-only parameters: zero
    # record gradients there change no record's norm, so without noise the model's
    # gradient is exactly what it is without them (one fixed batch, real Opacus hooks).
    task, x, y = _data(512, 2)
    batch = torch.from_numpy(x.dense(np.arange(64))), torch.from_numpy(y[:64])
    grads = []
    for audit_coords in (0, 500):
        torch.manual_seed(0)
        model = GradSampleModule(task.build_model())
        optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0),
                                noise_multiplier=0.0, max_grad_norm=0.01,
                                expected_batch_size=64)
        canaries = DiracCanaries(
            design=Design.draw(num_params=1029, canaries=1029 + audit_coords, seed=0),
            max_grad_norm=0.01, sample_rate=0.5, noise_multiplier=1.0, planned_steps=1)
        canaries.design.members[:] = False  # no canary: the records' own sum only
        observe_steps(optimizer, canaries)
        torch.nn.functional.binary_cross_entropy_with_logits(
            model(batch[0]), batch[1]).backward()
        optimizer.step()
        grads.append([p.grad.clone() for p in model.parameters()])
        assert len(optimizer.params) == len(grads[-1]) + (audit_coords > 0)
    for without, with_audit in zip(*grads, strict=True):
        assert torch.equal(without, with_audit)


def test_the_hooks_path_and_secure_noise_are_audited_too() -> None:
    # a hidden layer takes Opacus' per-sample-gradient hooks (the audit-only coordinates
    # get zero per-sample rows); secure mode its ChaCha20 noise
    claimed, _, caught = audited_round(claim=3.0, broken=True, buckets=512, hidden=2,
                                       canaries=3000)
    assert caught["canaries"] == 3000  # 512 * 2 + 2 + 2 + 1 = 1,029 of the model's
    assert caught["epsilon_lower_bound"] > claimed
    claimed, canaries, honest = audited_round(claim=3.0, broken=False, buckets=512, hidden=2,
                                              secure=True, canaries=3000)
    assert honest["epsilon_lower_bound"] <= claimed
    audit_only = np.arange(3000) >= 1029
    # the observer saw the noise (sigma x sqrt(steps)), on the audit-only coordinates too
    assert canaries.total[audit_only].std() > 1.0


def test_the_side_copy_never_changes_the_agencys_model(tmp_path: Path) -> None:
    # Without noise, a coordinate that no record touches keeps its value exactly in the
    # real model; in the side copy it moves wherever a member canary sits.
    task, x, y = _data(4096, 0)
    unused = np.setdiff1d(np.arange(4096), x.indices)
    plan = _plan(3.0, epochs=4)
    torch.manual_seed(0)
    model = task.build_model()
    before = model.net.weight.detach().clone().reshape(-1)
    design = Design.draw(num_params=4097, canaries=optimal_canaries(delta=DELTA,
                                                                    confidence=0.95), seed=0)
    design.save(tmp_path / DESIGN_FILE)
    seen: list[bool] = []

    def inner(m: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        seen.append("observer" in kwargs)
        return _train_without_noise(m, *args, **kwargs)

    train = with_whitebox_audit(inner, tmp_path)
    settings = {"train": TrainSettings(batch_size=32, learning_rate=1.0, local_epochs=4),
                "privacy": PrivacySettings(target_epsilon=3.0, target_delta=DELTA,
                                           max_grad_norm=CLIP), "plan": plan}
    result = train(model, x, y, **settings)
    assert seen == [False, True]  # the real round has no observer, the side copy has
    assert result.steps == plan.steps_per_round
    assert [p.shape for p in model.parameters()] == [(1, 4096), (1,)]  # no audit tensor
    after = model.net.weight.detach().reshape(-1)
    assert torch.equal(after[unused], before[unused])
    scores = load_scores(tmp_path / SCORES_FILE)
    assert scores["rounds"] == 1 and scores["steps"] == plan.steps_per_round
    assert scores["planned_steps"] == plan.steps_per_round
    member_unused = np.intersect1d(unused, np.flatnonzero(design.members))
    assert member_unused.size > 100
    assert np.mean(scores["total"][member_unused] > 0) > 0.9  # (1 - q)^steps are never drawn
    train(model, x, y, **settings)  # the next round adds to the same scores
    assert load_scores(tmp_path / SCORES_FILE)["rounds"] == 2


def test_a_claim_above_what_the_design_can_certify_is_inconclusive(tmp_path: Path) -> None:
    # 52 steps at rate 1/13 leave ~450 members never sampled: "member" guesses only, which
    # certify at most ~7.5. Without noise a claim of 3 is caught; a claim of 8 or 9 can be
    # contradicted by no run of this plan, so it is INCONCLUSIVE, never "passed".
    from federation.config import RunSettings
    from simulation import report
    from simulation._audit_broken_client import AUDIT_DIR
    from simulation.audit import AuditSettings, WhiteboxAudit, render

    claimed, canaries, _ = audited_round(claim=3.0, broken=True, epochs=4)
    folder = tmp_path / "a" / AUDIT_DIR
    canaries.design.save(folder / DESIGN_FILE)
    canaries.save(folder / SCORES_FILE, rounds=1)
    audit = WhiteboxAudit(
        audit=AuditSettings(mode="whitebox", agencies=("a",), confidence=0.95, broken=True,
                            canaries=200, gradient_canaries="auto"),
        state_root=tmp_path, seed=0, settings=RunSettings.from_flat(
            {"task.name": "advert-risk", "privacy.target_epsilon": 3.0,
             "privacy.target_delta": DELTA}))
    verdicts = {}
    for claim in (claimed, 8.0, 9.0):
        out = audit.evaluate(torch.nn.Linear(1, 1), [{"agency": "a", "run_epsilon": claim,
                                                      "epsilon": claim, "delta": DELTA}])
        (row,) = out["agencies"]
        assert row["non_member_guesses"] == 0 and row["best_possible_bound"] < 7.6
        verdicts[claim] = (out["caught"], out["inconclusive"], render(out),
                           report._audit_section(out))
    caught, inconclusive, text, html = verdicts[claimed]
    assert caught and not inconclusive and "AUDIT FAILED" in text and "FAILED" in html
    for claim in (8.0, 9.0):
        caught, inconclusive, text, html = verdicts[claim]
        assert not caught and inconclusive, claim
        assert "AUDIT INCONCLUSIVE" in text and "only 'member' guesses" in text
        assert "audit passed" not in text and "INCONCLUSIVE" in html


# --------------------------------------------------------------------------- heroes simulate

TINY = ["federation=three_agency", "federation.scale=0.1", "strategy.num_rounds=2",
        "baseline=false"]


def test_whitebox_settings_are_checked_before_anything_runs(tmp_path: Path) -> None:
    proc = heroes(["simulate", *TINY, "audit.enabled=true", "audit.mode=greybox",
                   "audit.gradient_canaries=3", "audit.agency=nobody",
                   f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    for problem in ("audit.mode='greybox' must be whitebox or blackbox",
                    "audit.gradient_canaries=3 must be auto", "audit.agency='nobody'"):
        assert problem in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "run" / "data").exists()


@pytest.mark.slow
def test_simulate_reports_each_audited_agencys_bound_beside_its_claim(tmp_path: Path) -> None:
    run = tmp_path / "broken"
    proc = heroes(["simulate", *TINY, "audit.enabled=true", "audit.mode=whitebox",
                   "audit.break_noise_for_testing=true", f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    assert "AUDIT FAILED" in proc.stdout
    summary = json.loads((run / "metrics.json").read_text())
    audit = summary["audit"]
    assert audit["mode"] == "whitebox" and audit["caught"] and audit["break_noise_for_testing"]
    assert not audit["inconclusive"]  # every guess right, and that already passes the claim
    (row,) = audit["agencies"]
    largest = max(summary["agencies"], key=lambda r: r["train_examples"])
    assert row["agency"] == audit["agency"] == largest["agency"]
    assert row["claimed_epsilon"] == pytest.approx(largest["run_epsilon"])
    assert row["claimed_epsilon"] == pytest.approx(3.0, abs=0.02)  # the default budget
    assert row["claimed_delta"] == 1e-5 and row["unit"] == audit["unit"]
    assert row["epsilon_lower_bound"] > row["claimed_epsilon"] + 2
    assert row["canaries"] == optimal_canaries(delta=1e-5, confidence=0.95)
    assert row["rounds_observed"] == 2
    assert row["steps_observed"] == row["planned_steps"]
    # the agency's own folder holds the canaries; the federation's folders do not
    state = run / "agency_state" / row["agency"] / "audit"
    assert (state / DESIGN_FILE).is_file() and (state / SCORES_FILE).is_file()
    assert not list((run / "server").rglob("whitebox-*"))

    report = heroes(["report", str(run)])
    assert report.returncode == 0, report.stderr[-3000:]
    html = (run / "report.html").read_text()
    section = html[html.index("Privacy audit (white-box"):]
    assert row["agency"] in section
    assert f"{row['epsilon_lower_bound']:.2f} at delta 1e-05" in section
    assert f"{row['claimed_epsilon']:.2f} at delta 1e-05" in section
    assert "per advert record" in section and "FAILED" in section
