"""The wire contract and the run summary (federation/protocol.py): strict, versioned, typed."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from hypothesis import given
from hypothesis import strategies as st

from federation.errors import ProtocolError
from federation.protocol import (
    SUMMARY_FILE,
    SUMMARY_VERSION,
    AgencyRow,
    NodeOutcome,
    PrivacySummary,
    Record,
    RoundRecord,
    RunSummary,
    Status,
)
from server.run_log import RunLog, reply_info

_ROW = AgencyRow(agency="uk-ngo", train_examples=40, test_examples=10, rounds_trained=1,
                 epsilon=math.inf, delta=1e-5, run_epsilon=None, ledger_epsilon=None,
                 budget_remaining=None, noise_multiplier=0.0, local_roc_auc=0.7,
                 local_oracle_roc_auc=0.8, rows_set_aside=2, failed_rounds=0,
                 rejected_rounds=0, rejected=None, stopped="refused from round 2: budget",
                 shared_with_consortium=False)


def _summary() -> RunSummary:
    rounds = [RoundRecord(
        round=1,
        train=[NodeOutcome(3, "uk-ngo", Status.OK, metrics={"num-examples": 40.0,
                                                           "train_loss": math.nan}),
               NodeOutcome(4, "es-police", Status.REFUSED, "budget")],
        evaluate=[NodeOutcome(3, "uk-ngo", Status.WITHHELD, "kept at the agency")],
        train_aggregate={"examples": 40.0, "max_epsilon": math.nan},
        evaluate_aggregate={}, wall_seconds=1.5)]
    return RunSummary(rounds=rounds, wall_seconds=2.0,
                      privacy=PrivacySummary(enabled=True, target_epsilon=3.0,
                                             target_delta=1e-5, unit="one record",
                                             accountant="prv"),
                      preset="tiny", seed=7, mode="federated", oracle_roc_auc=0.9,
                      global_metrics={"roc_auc": 0.8}, agencies=[_ROW],
                      agency_rounds={"uk-ngo": []}, consortium_sees="sums",
                      audit=None, centralised_baseline=None, baselines=None)


def _as_json(s: RunSummary) -> str:
    return json.dumps(s.to_json(), sort_keys=True)


def test_summary_round_trip_is_identity(tmp_path: Path) -> None:
    original = _summary()
    original.write(tmp_path / SUMMARY_FILE)
    back = RunSummary.read(tmp_path / SUMMARY_FILE)
    assert _as_json(back) == _as_json(original)  # NaN figures come back NaN (null on disk)
    assert back.rounds[0].train[1].status is Status.REFUSED
    assert back.agencies == [_ROW]
    assert math.isnan(back.rounds[0].train[0].metrics["train_loss"])
    on_disk = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert on_disk["version"] == SUMMARY_VERSION and on_disk["audit"] is None


_figures = st.dictionaries(st.sampled_from(["num-examples", "epsilon", "roc_auc", "loss"]),
                           st.floats(allow_infinity=False) | st.just(math.nan), max_size=4)
_outcomes = st.builds(NodeOutcome, node_id=st.integers(0, 2**63 - 1),
                      agency=st.text(max_size=20), status=st.sampled_from(list(Status)),
                      reason=st.text(max_size=40), metrics=_figures)


@given(st.lists(st.builds(RoundRecord, round=st.integers(1, 10_000),
                          train=st.lists(_outcomes, max_size=4),
                          evaluate=st.lists(_outcomes, max_size=4),
                          train_aggregate=_figures, evaluate_aggregate=_figures,
                          wall_seconds=st.floats(0, 1e6) | st.just(math.nan)), max_size=3))
def test_round_log_serialise_then_parse_is_identity(rounds: list[RoundRecord]) -> None:
    summary = RunSummary(rounds=rounds, wall_seconds=1.0,
                         privacy=PrivacySummary(enabled=False, target_epsilon=None,
                                                target_delta=None, unit="u", accountant="prv"))
    text = json.dumps(summary.to_json())
    back = RunSummary.from_json(json.loads(text), where="a test summary")
    assert json.dumps(back.to_json()) == text


def _write_raw(path: Path, data: dict[str, object]) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_a_summary_without_privacy_enabled_is_refused_naming_it(tmp_path: Path) -> None:
    data = _summary().to_json()
    del data["privacy"]["enabled"]
    path = _write_raw(tmp_path / SUMMARY_FILE, data)
    with pytest.raises(ProtocolError, match=r"'privacy' of .* lacks 'enabled'"):
        RunSummary.read(path)


def test_an_optional_field_must_still_be_written(tmp_path: Path) -> None:
    data = _summary().to_json()
    del data["audit"]  # null is allowed; absent is not
    with pytest.raises(ProtocolError, match="lacks 'audit'"):
        RunSummary.read(_write_raw(tmp_path / SUMMARY_FILE, data))


def test_an_agency_row_without_a_field_is_refused_naming_it(tmp_path: Path) -> None:
    data = _summary().to_json()
    del data["agencies"][0]["stopped"]
    with pytest.raises(ProtocolError, match=r"an agency row of .* lacks 'stopped'"):
        RunSummary.read(_write_raw(tmp_path / SUMMARY_FILE, data))


@pytest.mark.parametrize("version", [None, 0, SUMMARY_VERSION + 1, "1", True])
def test_a_wrong_or_absent_version_is_refused_naming_it(tmp_path: Path,
                                                         version: object) -> None:
    data = _summary().to_json()
    if version is None:
        del data["version"]
    else:
        data["version"] = version
    with pytest.raises(ProtocolError, match="'version'"):
        RunSummary.read(_write_raw(tmp_path / SUMMARY_FILE, data))


def test_an_unknown_status_is_refused_without_quoting_it(tmp_path: Path) -> None:
    data = _summary().to_json()
    data["rounds"][0]["train"][0]["status"] = "secret-agency-text"
    with pytest.raises(ProtocolError, match="is not one of ok, refused") as err:
        RunSummary.read(_write_raw(tmp_path / SUMMARY_FILE, data))
    assert "secret-agency-text" not in str(err.value)


def _reply(node_id: int, agency: Mapping[str, str | float]) -> Message:
    meta = Metadata(run_id=1, message_id=f"m{node_id}", src_node_id=node_id, dst_node_id=0,
                    reply_to_message_id=f"i{node_id}", group_id="1", created_at=0.0,
                    ttl=600.0, message_type="train")
    content = RecordDict({Record.AGENCY: ConfigRecord(dict(agency)),
                          Record.METRICS: MetricRecord({"num-examples": 5.0})})
    msg: Message = Message(content, metadata=meta)  # type: ignore[call-overload]  # flwr stubs
    return msg


def test_a_node_reply_without_its_status_is_an_error_not_ok() -> None:
    reply = _reply(5, {"agency": "pt-ngo", "reason": ""})
    with pytest.raises(ProtocolError, match=r"lacks 'status'.*same heroes-fl version"):
        reply_info(reply)
    run_log = RunLog()
    (outcome,) = run_log.outcomes([5], [reply])
    assert outcome.status is Status.REJECTED and "'status'" in outcome.reason
    ok = _reply(6, {"agency": "pt-ngo", "status": "ok", "reason": ""})
    assert reply_info(ok) == ("pt-ngo", Status.OK, "")


def test_a_missing_node_and_a_missing_record_are_named() -> None:
    meta = Metadata(run_id=1, message_id="m9", src_node_id=9, dst_node_id=0,
                    reply_to_message_id="i9", group_id="1", created_at=0.0, ttl=600.0,
                    message_type="train")
    bare = Message(RecordDict({Record.METRICS: MetricRecord({"num-examples": 1.0})}),
                   metadata=meta)  # type: ignore[call-overload]  # flwr stubs
    with pytest.raises(ProtocolError, match="lacks the agency record"):
        reply_info(bare)
    outcomes = RunLog().outcomes([9, 10], [bare])
    assert [o.status for o in outcomes] == [Status.REJECTED, Status.MISSING]


def _statuses(summary: dict[str, object]) -> list[object]:
    rounds = summary["rounds"]
    assert isinstance(rounds, list)
    return [o["status"] for r in rounds for kind in ("train", "evaluate") for o in r[kind]]


@pytest.mark.slow
def test_every_status_of_a_real_run_parses(quick_run: Path) -> None:
    """A real simulated run's metrics.json (server and summary) reads back, and each status
    string in it is one of Status. The run: the session's shared quick run (conftest.py)."""
    run = quick_run
    for path in (run / SUMMARY_FILE, run / "server" / SUMMARY_FILE):
        raw = json.loads(path.read_text())
        statuses = _statuses(raw)
        assert statuses and all(Status.parse(s, where=str(path)) for s in statuses)
        summary = RunSummary.read(path)
        assert summary.rounds and summary.privacy.enabled is raw["privacy"]["enabled"]


def test_a_json_true_is_not_a_number(tmp_path: Path) -> None:
    data = _summary().to_json()
    data["rounds"][0]["train"][0]["metrics"]["num-examples"] = True
    with pytest.raises(ProtocolError, match=r"'num-examples' in .* is not a int or float"):
        RunSummary.read(_write_raw(tmp_path / SUMMARY_FILE, data))


def test_the_round_log_in_json_form_holds_plain_types_only(tmp_path: Path) -> None:
    """Checkpoints keep the round log with torch.save; a weights-only torch.load accepts
    only plain types, so no Status or Metric (str subclasses) may remain in it."""
    import torch

    from federation.protocol import Metric

    record = RoundRecord(round=1, train=[NodeOutcome(1, "a", Status.OK,
                                                     metrics={Metric.NUM_EXAMPLES: 3.0})],
                         train_aggregate={Metric.MAX_EPSILON: math.nan})
    saved = record.to_json()
    torch.save({"rounds": [saved]}, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["rounds"] == [saved]
    outcome = saved["train"][0]
    assert {type(k) for k in outcome["metrics"]} == {str} and type(outcome["status"]) is str


def test_a_secagg_stage_without_a_key_is_a_refusal_naming_it() -> None:
    """A server's stage message that lacks a key: the node refuses (a FederationError, the
    ProtocolError kind) and names the key; the server reading a node's reply likewise."""
    from federation.protocol import SecAggKey
    from tests.secagg_driver import Federation, open_session, set_up

    fed = Federation(k=3, min_agencies=2)
    srv, setup = set_up(fed)
    share_cfg = srv.share_configs(setup)[fed.ids[0]]
    del share_cfg[SecAggKey.C_PKS]
    with pytest.raises(ProtocolError, match=r"secure aggregation refused by this node: .*"
                                            r"missing: \['c_pks'\]"):
        fed.step(fed.ids[0], "share", share_cfg)
    n = fed.ids[0]
    srv, setup = set_up(fed, server_round=2)
    unsigned = {k: v for k, v in setup[n].items() if k != SecAggKey.SIGNATURE}
    with pytest.raises(ProtocolError, match=rf"node {n}'s set-up reply lacks 'signature'"):
        srv.share_configs({**setup, n: unsigned})
    rnd = open_session(Federation(k=3, min_agencies=2))
    with pytest.raises(ProtocolError, match=rf"node {n}'s share reply lacks 'boxes'"):
        rnd.srv.masked_configs({n: {SecAggKey.TO: []}})


def test_the_renderers_refuse_a_part_without_a_figure_it_must_hold(tmp_path: Path) -> None:
    """A part of the summary the run had, lacking a figure, is an error naming the figure
    (never a blank): the printed table, the sweep row and the HTML report."""
    from simulation import report
    from simulation.summary import render
    from simulation.sweep import secure_rounds

    summary = _summary()
    summary.global_metrics = {"roc_auc": 0.7, "pr_auc": 0.2}  # no Brier
    with pytest.raises(ProtocolError, match=r"'global' of the run summary lacks 'brier'"):
        render(summary)
    summary.global_metrics, summary.audit = None, {"mode": "whitebox"}
    with pytest.raises(ProtocolError, match=r"the run summary's audit lacks "):
        report.run_sections(summary, "run")
    assert secure_rounds(summary.rounds) == 0
