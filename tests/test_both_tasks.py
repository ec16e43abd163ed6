"""Both tasks in one command (`heroes simulate experiment=both_tasks`, issue 15): each
task federated over the agencies that hold that kind of data, one node state per agency
with one ledger stream per (task, dataset); and, on the conversation task, the Hydra sweep,
the white-box audit, the report, checkpoints and resume, the release bundle and the
baselines.

The slow tests share one real run (`both_run`): a Hydra multirun (`-m`) of one job of
experiment=both_tasks at tiny scale (three advert agencies at scale 0.1, three conversation
agencies at scale 0.25, two rounds of one local epoch, the white-box audit on), in a
subprocess with real Flower, Ray, Opacus and secure aggregation. Two more real runs resume
the conversation federation from its round-1 checkpoint and run its baselines. No mocks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cli.research import CONFIG_DIR
from federation.bundle import verify_bundle
from federation.errors import ConfigError
from federation.ledger import Ledger
from federation.protocol import SUMMARY_FILE, RunSummary
from federation.signing import generate_signing_key, load_public_key
from server.release import release_run
from simulation import report, sweep
from simulation.both_tasks import check_all, read_index, task_runs
from tests._heroes import heroes

ADVERT, CONVERSATION = "advert-risk", "conversation-risk"
ADVERT_UNIT = "per advert record in one agency's training export"
CONVERSATION_UNIT = "per conversation (all its messages) in one agency's training export"
#: The tiny both-tasks run: es-police is in both three-agency presets.
TINY = ["federation=three_agency",
        "federation@tasks.conversation_risk.federation=conversations_three",
        "tasks.conversation_risk.federation.scale=0.25", "strategy.num_rounds=2",
        "train.local_epochs=1", "tasks.conversation_risk.train.local_epochs=1",
        "baseline=false"]
#: The conversation federation of TINY, alone (its resume and its baselines).
CONVERSATIONS_ALONE = ["task=conversation_risk", "federation=conversations_three",
                       "federation.scale=0.25", "strategy.num_rounds=2",
                       "train.local_epochs=1"]


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


# --- configuration (fast) ------------------------------------------------------------------

def test_both_tasks_federates_each_task_over_the_agencies_holding_its_data() -> None:
    runs = task_runs(_compose("experiment=both_tasks"))
    assert [r.name for r in runs] == [ADVERT, CONVERSATION]
    assert [r.cfg.federation.name for r in runs] == ["six_agency", "conversations_six"]
    assert all("tasks" not in r.cfg for r in runs)
    ids = [{a.agency_id for a in r.cfg.federation.agencies} for r in runs]
    assert ids[0] & ids[1] == {"es-police", "br-pe-police", "eu-police-small", "mx-co-ngo"}
    # every other setting is shared; a task's section sets its own federation
    tiny = task_runs(_compose("experiment=both_tasks", *TINY))
    assert [r.cfg.federation.name for r in tiny] == ["three_agency", "conversations_three"]
    assert tiny[1].cfg.federation.scale == 0.25 and tiny[0].cfg.federation.scale == 0.1
    assert tiny[0].cfg.strategy == tiny[1].cfg.strategy
    # the default run is one task, as before
    assert "tasks" not in _compose()


def test_a_bad_several_task_config_is_refused_naming_the_rule_and_the_fix(
        tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        task_runs(_compose("experiment=both_tasks", "task=conversation_risk",
                           "mode=baselines", "paths.resume_from=/nowhere"))
    text = str(exc.value)
    assert "'conversation-risk' is federated twice" in text and "Fix:" in text
    assert "mode='baselines'" in text and "task=conversation_risk mode=baselines" in text
    assert "paths.resume_from resumes one federation" in text
    with pytest.raises(ConfigError, match=r"a task's section holds only \['task', "
                                          r"'federation', 'train'\]"):
        task_runs(_compose("experiment=both_tasks",
                           "+tasks.conversation_risk.privacy={enabled: false}"))
    # each task trains with its own defaults (train/for_TASK.yaml) unless told otherwise
    adverts, conversations = task_runs(_compose("experiment=both_tasks"))
    assert adverts.cfg.train.non_private_learning_rate is None
    assert conversations.cfg.train.non_private_learning_rate == 3.0
    # each task's own preflight, every problem at once, each naming its task
    runs = task_runs(_compose("experiment=both_tasks", "strategy.quorum=5",
                              "federation=three_agency",
                              "federation@tasks.conversation_risk.federation="
                              "conversations_three"))
    with pytest.raises(ConfigError) as exc:
        check_all(runs, tmp_path)
    text = str(exc.value)
    assert f"task {ADVERT}: strategy.quorum=5 exceeds" in text
    assert f"task {CONVERSATION}: strategy.quorum=5 exceeds" in text
    assert not any(tmp_path.iterdir())  # nothing generated


def test_the_command_refuses_before_anything_is_generated(tmp_path: Path) -> None:
    # A fresh process, not cli.main in-process: after other in-process commands, Hydra's
    # logging set-up in the same process closed pytest's stderr ("lost sys.stderr") and
    # ended the whole run.
    run = tmp_path / "run"
    proc = heroes(["simulate", "experiment=both_tasks", "task=conversation_risk",
                   f"hydra.run.dir={run}"])
    text = proc.stderr + proc.stdout
    assert proc.returncode == 2, text[-3000:]
    assert "federated twice" in text and "Traceback" not in text
    assert not (run / CONVERSATION).exists() and not (run / "agency_state").exists()


# --- one real run of both tasks (slow) ------------------------------------------------------

@pytest.fixture(scope="module")
def both_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the job folder, its output) of `heroes simulate -m experiment=both_tasks ...`."""
    multirun = tmp_path_factory.mktemp("both") / "multirun"
    proc = heroes(["simulate", "-m", "experiment=both_tasks", *TINY, "audit.enabled=true",
                   "seed=0", f"hydra.sweep.dir={multirun}"])
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-3000:]
    return multirun / "0", proc.stdout


def _summary(job: Path, task: str) -> RunSummary:
    return RunSummary.read(job / task / SUMMARY_FILE)


@pytest.mark.slow
def test_each_task_runs_over_its_agencies_with_one_node_state_per_agency(
        both_run: tuple[Path, str]) -> None:
    job, out = both_run
    assert read_index(job) == [(ADVERT, job / ADVERT), (CONVERSATION, job / CONVERSATION)]
    assert "conversation_risk" in (job / "config.yaml").read_text()  # the whole command's
    agencies = {ADVERT: ["es-police", "uk-ngo", "br-police"],
                CONVERSATION: ["es-police", "uk-hotline", "br-ngo"]}
    for task, names in agencies.items():
        s = _summary(job, task)
        assert [a.agency for a in s.agencies or []] == names
        assert [r.round for r in s.rounds] == [1, 2]
        assert all(a.rounds_trained == 2 for a in s.agencies or [])
        # each task's own figures only: the shared agency's record holds both runs
        assert len([e for e in (s.agency_rounds or {})["es-police"]
                    if e["kind"] == "train"]) == 2
        # checkpoints and the final model of each task, in its own folder
        assert sorted(p.name for p in (job / task / "server" / "checkpoints").iterdir()) == [
            "round-0001.pt", "round-0002.pt"]
        saved = torch.load(job / task / "model.pt", weights_only=True)
        assert saved["settings"]["task.name"] == task
    # one node state for es-police: one key, one ledger, one stream per (task, dataset)
    state = job / "agency_state"
    assert sorted(p.name for p in state.iterdir()) == sorted(
        {"es-police", "uk-ngo", "br-police", "uk-hotline", "br-ngo"})
    with Ledger.open(state / "es-police", create=False) as ledger:
        streams = ledger.streams()
        units = {r["task"]: r["unit"] for r in ledger.report(None)}
    assert sorted(t for t, _ in streams) == [ADVERT, CONVERSATION]
    assert len({d for _, d in streams}) == 2
    assert units == {ADVERT: "one advert record in one agency's training export",
                     CONVERSATION: "one conversation (all its messages) in one agency's "
                                   "training export"}
    local = (state / "es-police" / "local-metrics.jsonl").read_text().splitlines()
    assert len({json.loads(line)["run_id"] for line in local}) == 2
    # the printed summary shows both tasks, each epsilon with its delta and unit
    tail = out[out.index("tasks of this run"):]
    assert f"target 3 at delta 1e-05, agencies spent at most 3.00, {ADVERT_UNIT}" in tail
    assert f"target 3 at delta 1e-05, agencies spent at most 3.00, {CONVERSATION_UNIT}" \
        in tail
    assert f"es-police: one node state, ledger streams ({ADVERT}, es-police/" in tail


@pytest.mark.slow
def test_the_white_box_audit_audits_each_task_in_its_unit(both_run: tuple[Path, str]) -> None:
    job, _ = both_run
    for task, unit in ((ADVERT, "advert record"), (CONVERSATION, "conversation (all")):
        audit = _summary(job, task).audit
        assert audit is not None and audit["mode"] == "whitebox"
        assert unit in audit["unit"]
        (row,) = audit["agencies"]
        assert row["epsilon_lower_bound"] is not None
        assert 0 <= row["epsilon_lower_bound"] < row["claimed_epsilon"]
        assert row["claimed_epsilon"] == pytest.approx(3.0, abs=0.05)
        assert not audit["caught"]
    # the advert audit's canary design was set aside before the conversations ran
    audited = _summary(job, ADVERT).audit
    assert audited is not None
    assert (job / "agency_state" / audited["agencies"][0]["agency"] / f"audit.{ADVERT}"
            ).is_dir()


@pytest.mark.slow
def test_the_sweep_table_and_the_reports_show_both_tasks(both_run: tuple[Path, str],
                                                         tmp_path: Path) -> None:
    job, _ = both_run
    multirun = tmp_path / "multirun"
    shutil.copytree(job.parent, multirun)  # the tables are written into the folder
    rows = [sweep.run_row(r) for r in sweep.find_runs(multirun)]
    assert sorted(r["task"] for r in rows) == [ADVERT, CONVERSATION]
    assert sweep.incomplete_runs(multirun) == []
    points = sweep.point_table(rows)
    assert len(points) == 2 and {p["task"] for p in points} == {ADVERT, CONVERSATION}
    assert all(p["global_roc_auc_n"] == 1 and p["audit_epsilon_lower_bound_n"] == 1
               for p in points)
    # the run report of the job: both tasks, each epsilon with its delta and unit
    html = report.build(multirun / "0")
    assert html.count("<h2>Task ") == 2 and "<h2>Tasks</h2>" in html
    for unit in (ADVERT_UNIT, CONVERSATION_UNIT):
        assert f"target 3 at delta 1e-05, {unit}" in html.replace("&#x27;", "'")
    # a conversation run's own report, and the report of the whole sweep
    one = report.build(multirun / "0" / CONVERSATION).replace("&#x27;", "'")
    assert "Privacy audit (white-box" in one and CONVERSATION_UNIT in one
    assert "<h2>Sweep</h2>" in report.build(multirun)


@pytest.mark.slow
def test_the_conversation_model_is_released_and_verifies(both_run: tuple[Path, str],
                                                         tmp_path: Path) -> None:
    job, _ = both_run
    generate_signing_key(tmp_path / "signing.key", tmp_path / "signing.pub")
    run = tmp_path / "run"
    shutil.copytree(job / CONVERSATION, run)
    bundle = release_run(run, signing_key=tmp_path / "signing.key")
    verified = verify_bundle(load_public_key(tmp_path / "signing.pub"), bundle)
    assert verified.card["task"]["name"] == CONVERSATION
    assert verified.card["privacy"]["unit"].startswith("one conversation")
    assert verified.card["privacy"]["target_delta"] == pytest.approx(1e-5)
    task, model = verified.load_model()
    assert task.name == CONVERSATION and sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.slow
def test_the_conversation_federation_resumes_from_its_checkpoint(
        both_run: tuple[Path, str], tmp_path: Path) -> None:
    """As if `heroes simulate task=conversation_risk` had been killed after round 1: its
    folder with only round 1's checkpoint, and its agencies' node states."""
    job, _ = both_run
    run = tmp_path / "run"
    shutil.copytree(job / CONVERSATION, run)
    for agency in ("es-police", "uk-hotline", "br-ngo"):
        shutil.copytree(job / "agency_state" / agency, run / "agency_state" / agency)
    (run / "server" / "checkpoints" / "round-0002.pt").unlink()
    for done in (run / SUMMARY_FILE, run / "model.pt", run / "server" / SUMMARY_FILE,
                 run / "server" / "model.pt"):
        done.unlink()
    first = torch.load(run / "server" / "checkpoints" / "round-0001.pt", weights_only=True)
    proc = heroes(["simulate", *CONVERSATIONS_ALONE, "baseline=false",
                   f"paths.resume_from={run / 'server'}", f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-3000:]
    assert "resuming from" in proc.stdout + proc.stderr
    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert summary["rounds"][:1] == first["rounds"]  # round 1 as checkpointed
    assert (run / "server" / "checkpoints" / "round-0002.pt").is_file()


@pytest.mark.slow
def test_conversation_baselines_compare_all_four_arms(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = heroes(["simulate", *CONVERSATIONS_ALONE, "mode=baselines",
                   f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-3000:]
    summary = RunSummary.read(run / SUMMARY_FILE)
    assert summary.privacy.unit.startswith("one conversation")
    for arm in ("centralised_non_private", "federated_non_private", "federated_dp"):
        assert summary.arm_pooled(arm)["roc_auc"] is not None
    gain = summary.gain_rows()
    assert sorted(g["agency"] for g in gain) == ["br-ngo", "es-police", "uk-hotline"]
    assert all(g["alone_epsilon"] == pytest.approx(3.0, abs=0.05) for g in gain)
    assert "gain from federating" in proc.stdout
    assert CONVERSATION_UNIT in proc.stdout
    assert (run / "arms" / "federated_dp" / "server" / "model.pt").is_file()
    assert "alone, same DP" in report.build(run)

