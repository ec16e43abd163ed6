"""Fuzzing the inputs an agency or a researcher controls: policy.toml, the node's [node]
settings, the simulation configuration (Hydra overrides, composed in-process) and the files
`heroes agency score` reads.

Every case ends in success or a deliberate heroes-fl error (the commands exit 0 or 2), never
another exception; a canary planted in a value read from an agency's file never appears in
the error; and the ledger's bytes are the same after every refusal. Hypothesis runs
derandomized with a fixed number of examples (the same cases every run), beside generated
cases that are known to be hostile.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf.errors import OmegaConfBaseException

from clients.agency import AgencyHome
from clients.score import CONSULTATION_LOG, score_file
from federation.config import RunSettings
from federation.errors import HeroesError
from federation.ledger import HEAD_FILE, LEDGER_FILE, Ledger
from federation.pki import make_node_key
from federation.policy import load_policy
from federation.signing import generate_signing_key
from federation.tasks import get_task
from server.release import release_run
from server.server_app import write_outputs
from server.strategy import RunLog
from simulation import preflight

ROOT = Path(__file__).resolve().parents[1]
CANARY = "CANARY-q7Zx"  # planted in values from agency files; must never be echoed


def fuzz(examples: int) -> settings:
    """The same ``examples`` cases every run, however long each takes."""
    return settings(deadline=None, derandomize=True, database=None, max_examples=examples,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- a node's state folder with a ledger ---------------------------------------------------

@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node state folder holding a real ledger (its bytes are checked after each case)."""
    state = tmp_path_factory.mktemp("node")
    make_node_key(state / "node.key", state / "node.key.pub", comment="fuzz")
    Ledger.open(state).close()
    return state


def ledger_bytes(state: Path) -> tuple[bytes, bytes]:
    return (state / LEDGER_FILE).read_bytes(), (state / HEAD_FILE).read_bytes()


def assert_clean(exc: BaseException) -> None:
    """A refusal: one of ours, and without the canary."""
    assert isinstance(exc, HeroesError), f"{type(exc).__name__}: {exc}"
    assert CANARY not in str(exc), str(exc)


# --- policy.toml ------------------------------------------------------------------------------

def _scalar() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.booleans(), st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(["false", "true", "no", "1", "1e-5", "rdp", "stop", "stretch", "",
                         CANARY, f"{CANARY} rdp", "inf", "nan"]),
        st.text(max_size=12).map(lambda t: CANARY + t),
    )


_VALUE = st.recursive(_scalar(), lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b"]), inner,
                                                 max_size=2)), max_leaves=4)
_POLICY_KEYS = {
    "privacy_budget": ["max_epsilon", "delta", "accountant", "allow_non_private", "on_budget",
                       "max_epsilom"],
    "secure_aggregation": ["min_threshold", "min_agencies", "required", "threshold"],
    "sharing": ["share_local_metrics", "share"],
}
_GOOD: dict[str, dict[str, Any]] = {
    "privacy_budget": {"max_epsilon": 10.0, "delta": 1e-5, "accountant": "rdp",
                       "allow_non_private": False, "on_budget": "stretch"},
    "secure_aggregation": {"min_threshold": 0.5, "min_agencies": 3, "required": False},
    "sharing": {"share_local_metrics": False},
}


@st.composite
def policy_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A policy with some keys changed to values of any type, some dropped, some added."""
    doc: dict[str, Any] = {s: dict(t) for s, t in _GOOD.items()}
    for section, keys in _POLICY_KEYS.items():
        if draw(st.integers(0, 9)) == 0:
            doc[section] = draw(_scalar())  # a section that is not a table
            continue
        for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
            if draw(st.booleans()):
                doc[section][key] = draw(_VALUE)
            else:
                doc[section].pop(key, None)
    if draw(st.integers(0, 4)) == 0:
        doc[draw(st.sampled_from(["max_epsilon", "privacy", "node"]))] = draw(_VALUE)
    return doc


def _write_policy(node_dir: Path, doc: dict[str, Any]) -> None:
    """A drawn document as the node's policy.toml, the file an agency edits by hand."""
    (node_dir / "policy.toml").write_text(tomli_w.dumps(doc), encoding="utf-8")


def _load_policy_and_ledger(state: Path) -> None:
    """What a node does with its policy: read it, then report its ledger against it."""
    policy = load_policy(state)
    with Ledger.open(state, create=False) as ledger:
        ledger.report(policy)


@fuzz(60)
@given(doc=policy_documents())
def test_policy_files_are_used_or_refused_cleanly(node_dir: Path, doc: dict[str, Any]) -> None:
    before = ledger_bytes(node_dir)
    _write_policy(node_dir, doc)
    try:
        _load_policy_and_ledger(node_dir)
    except Exception as exc:
        assert_clean(exc)
        assert ledger_bytes(node_dir) == before


@fuzz(25)
@given(raw=st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: f"[privacy_budget]\n{t}\nnote = \"{CANARY}\"\n"),
    st.integers(1, 3000).map(lambda n: "[privacy_budget]\nmax_epsilon = " + "[" * n
                             + "]" * n + "\n"),
))
def test_policy_files_that_are_not_toml_are_refused_cleanly(node_dir: Path,
                                                            raw: bytes | str) -> None:
    before = ledger_bytes(node_dir)
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    (node_dir / "policy.toml").write_bytes(data)
    try:
        _load_policy_and_ledger(node_dir)
    except Exception as exc:
        assert_clean(exc)
        assert ledger_bytes(node_dir) == before


#: Values the issue found misread, and their neighbours: each must be refused by name.
MISREAD = [
    ("privacy_budget", "allow_non_private", "false"), ("privacy_budget", "allow_non_private", "no"),
    ("privacy_budget", "allow_non_private", 1), ("privacy_budget", "allow_non_private", 0),
    ("privacy_budget", "max_epsilon", True), ("privacy_budget", "max_epsilon", "10"),
    ("privacy_budget", "max_epsilon", float("nan")), ("privacy_budget", "max_epsilon", -1.0),
    ("privacy_budget", "delta", False), ("privacy_budget", "delta", 1),
    ("privacy_budget", "accountant", CANARY), ("privacy_budget", "on_budget", CANARY),
    ("secure_aggregation", "required", "true"), ("secure_aggregation", "min_agencies", 2.5),
    ("secure_aggregation", "min_agencies", True), ("secure_aggregation", "min_threshold", 0.4),
    ("sharing", "share_local_metrics", "false"), ("sharing", "share_local_metrics", 1),
    ("privacy_budget", "bogus", CANARY), ("sharing", "share_metrics", True),
]


@pytest.mark.parametrize(("section", "key", "value"), MISREAD,
                         ids=[f"{s}.{k}={v!r}" for s, k, v in MISREAD])
def test_misread_policy_values_are_refused_by_name(node_dir: Path, section: str, key: str,
                                                   value: object) -> None:
    doc = {s: dict(t) for s, t in _GOOD.items()}
    doc[section][key] = value
    _write_policy(node_dir, doc)
    before = ledger_bytes(node_dir)
    with pytest.raises(HeroesError) as err:
        _load_policy_and_ledger(node_dir)
    assert_clean(err.value)
    assert key in str(err.value)
    assert ledger_bytes(node_dir) == before


# --- [node] in policy.toml --------------------------------------------------------------------

_NODE_GOOD = {"name": "eu-police-north", "data_dir": "/srv/heroes/export",
              "consortium": "fl.consortium.example:9092", "allowed_tasks": ["advert-risk"],
              "runtime_port": 9094, "health_port": 9098}


@st.composite
def node_sections(draw: st.DrawFn) -> dict[str, Any]:
    node: dict[str, Any] = dict(_NODE_GOOD)
    keys = [*_NODE_GOOD, "dataset_id", "nmae", "port"]
    for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
        if draw(st.booleans()):
            node[key] = draw(_VALUE)
        else:
            node.pop(key, None)
    doc = {"privacy_budget": dict(_GOOD["privacy_budget"]), "node": node}
    if draw(st.integers(0, 5)) == 0:
        doc[draw(st.sampled_from(["nodes", "sharing", "privacy"]))] = {"x": CANARY}
    return doc


@fuzz(40)
@given(doc=node_sections())
def test_node_settings_are_used_or_refused_cleanly(node_dir: Path, doc: dict[str, Any]) -> None:
    before = ledger_bytes(node_dir)
    _write_policy(node_dir, doc)
    try:
        node = AgencyHome(node_dir).node()
    except Exception as exc:
        assert_clean(exc)
    else:  # what was accepted has the promised types
        assert isinstance(node.name, str) and isinstance(node.consortium, str)
        assert all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536
                   for p in (node.runtime_port, node.health_port))
        assert node.allowed_tasks and all(isinstance(t, str) for t in node.allowed_tasks)
    assert ledger_bytes(node_dir) == before


NODE_MISREAD = [("runtime_port", "9094"), ("runtime_port", True), ("runtime_port", 70000),
                ("health_port", 9094.0), ("name", CANARY), ("name", 7),
                ("consortium", CANARY), ("consortium", "host:²"), ("allowed_tasks", CANARY),
                ("allowed_tasks", ["advert-risk", f"x,{CANARY}"]), ("data_dir", ["a"]),
                ("dataset_id", 5), ("nmae", CANARY)]


@pytest.mark.parametrize(("key", "value"), NODE_MISREAD,
                         ids=[f"{k}={v!r}" for k, v in NODE_MISREAD])
def test_misread_node_values_are_refused_by_name(node_dir: Path, key: str,
                                                 value: object) -> None:
    node = {**_NODE_GOOD, key: value}
    doc = {"privacy_budget": dict(_GOOD["privacy_budget"]), "node": node}
    _write_policy(node_dir, doc)
    with pytest.raises(HeroesError) as err:
        AgencyHome(node_dir).node()
    assert_clean(err.value)
    assert f"[node] {key}" in str(err.value) or f"'{key}'" in str(err.value)


# --- the simulation configuration -------------------------------------------------------------

_SIM_KEYS = ["strategy.quorum", "strategy.min_nodes", "strategy.min_available",
             "strategy.num_rounds", "strategy.aggregation", "strategy.krum_byzantine",
             "strategy.fraction_train", "strategy.round_timeout", "privacy.enabled",
             "privacy.target_epsilon", "privacy.target_delta", "secagg.mode",
             "secagg.threshold", "simulation.client_cpus", "simulation.verbose", "seed",
             "test_fraction", "mode", "baseline", "federation.scale", "task.num_buckets",
             "task.hidden", "train.batch_size", "train.local_epochs",
             "agency_policy.max_epsilon", "agency_policy.allow_non_private",
             "agency_policy.secure_min_agencies", "agency_policy.on_budget",
             "audit.enabled", "audit.canaries", "audit.agency", "paths.resume_from",
             "tracking.tensorboard", "eval.k"]
_SIM_VALUES = st.one_of(
    st.integers(-5, 12).map(str), st.sampled_from(
        ["0", "1", "2", "3", "100000", "2.5", "-1.0", "nan", "inf", "1e-5", "0.5", "true",
         "false", "'false'", "null", "abc", "[1,2]", "{a: 1}", "${seed}", "${nowhere}",
         "krum", "median", "off", "on", "baselines", "centralised", "''", "'es-police'",
         "/nonexistent", "1048576", "[1", "a=b"]),
    st.text(alphabet="abc012.-_ ", max_size=6))
_GROUPS = st.sampled_from(["strategy=fedprox", "strategy=fedadam", "privacy=off",
                           "privacy=eps1", "federation=three_agency", "federation=five_agency",
                           "experiment=quick", "strategy=nope", "+bogus=1", "~privacy.target_delta",
                           "+strategy.extra=1", "~secagg"])


@st.composite
def overrides(draw: st.DrawFn) -> list[str]:
    out = [f"{k}={draw(_SIM_VALUES)}" for k in
           draw(st.lists(st.sampled_from(_SIM_KEYS), min_size=1, max_size=4, unique=True))]
    if draw(st.booleans()):
        out.insert(0, draw(_GROUPS))
    return out


@pytest.fixture(scope="module")
def hydra_configs() -> Iterator[None]:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        yield


def _check_simulation(items: list[str]) -> str:
    """What `heroes simulate` would do with these overrides, up to its pre-flight: 'ok', or
    the kind of configuration error (each exits 2). Anything else propagates."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cfg = compose("config", overrides=items)
            preflight.check(cfg, data_root=Path(tmp) / "data", output_dir=Path(tmp) / "server",
                            state_root=Path(tmp) / "agency_state")
            outcome = "ok"
        except HeroesError:
            outcome = "refused"
        except (HydraException, OmegaConfBaseException):
            outcome = "hydra"
        assert os.listdir(tmp) == []  # nothing written, least of all data
    return outcome


@fuzz(60)
@given(items=overrides())
def test_simulation_overrides_run_or_are_refused_before_anything_is_written(
        hydra_configs: None, items: list[str]) -> None:
    outcome = _check_simulation(items)
    assert outcome in ("ok", "refused", "hydra")


def test_the_default_and_preset_configurations_pass(hydra_configs: None) -> None:
    for items in ([], ["experiment=quick"], ["strategy=fedprox"], ["strategy=fedadam"],
                  ["federation=twenty_agency"], ["federation=hundred_agency"],
                  ["privacy=off"], ["mode=baselines"], ["audit.enabled=true"],
                  ["federation=five_agency", "strategy.aggregation=krum", "secagg.mode=off"]):
        assert _check_simulation(items) == "ok", items


# --- what `heroes agency score` reads -------------------------------------------------------

@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("rel")
    generate_signing_key(tmp / "c.key", tmp / "c.pub")
    task = get_task("advert-risk", {"num_buckets": 256})
    model = task.build_model()
    weights = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 256)))
    with torch.no_grad():
        model.net.weight.copy_(weights)  # type: ignore[union-attr, operator]
    flat = {"task.name": "advert-risk", "task.num_buckets": 256,
            "privacy.target_epsilon": 3.0, "privacy.target_delta": 1e-5}
    write_outputs(tmp / "run", RunSettings.from_flat(flat), model.state_dict(), RunLog(), 0.0)
    return release_run(tmp / "run", signing_key=tmp / "c.key", out=tmp / "bundle"), tmp / "c.pub"


_CELL = st.one_of(st.sampled_from(["", CANARY, f"{CANARY} escort 24h", "\x00", '"', "\r\n",
                                   "a,b", "\ufeff", "\ud800", "é" * 3, "1", "-1"]),
                  st.text(max_size=30).map(lambda t: t + CANARY),
                  st.text(alphabet="abcdefghij klmnop", min_size=1, max_size=40)
                  .map(lambda t: f"{t} {CANARY} new in town"))


@st.composite
def score_inputs(draw: st.DrawFn) -> tuple[str, bytes]:
    """An input file for `heroes agency score`: CSV or JSONL, plausible or not."""
    suffix = draw(st.sampled_from([".csv", ".jsonl", ".csv", ".jsonl", ".txt", ".parquet"]))
    if draw(st.integers(0, 5)) == 0:
        return suffix, draw(st.binary(max_size=300))
    rows = draw(st.lists(st.tuples(_CELL, _CELL), min_size=draw(st.sampled_from([0, 1, 1, 1])),
                         max_size=6))
    header = draw(st.sampled_from([("advert_id", "text")] * 4 + [
        ("text", "advert_id"), ("id", "text"), (CANARY, "text"), ("advert_id", CANARY)]))
    if suffix == ".jsonl":
        lines = []
        for a, b in rows:
            record: Any = {header[0]: a, header[1]: b}
            if draw(st.integers(0, 6)) == 0:
                record = draw(st.sampled_from([[a, b], a, 5, None, {"text": {"x": b}}]))
            lines.append(json.dumps(record, ensure_ascii=draw(st.booleans())))
        text = "\n".join(lines)
    else:
        text = "\n".join([",".join(header)] + [f'{a},"{b}"' for a, b in rows])
    return suffix, text.encode("utf-8", "surrogatepass")


@fuzz(40)
@given(case=score_inputs())
def test_score_inputs_are_scored_or_refused_and_nothing_is_lost(
        node_dir: Path, released: tuple[Path, Path], case: tuple[str, bytes]) -> None:
    suffix, data = case
    before = ledger_bytes(node_dir)
    log = node_dir / CONSULTATION_LOG
    entries = log.read_bytes().count(b"\n") if log.exists() else 0
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"adverts{suffix}"
        source.write_bytes(data)
        out = Path(tmp) / "results.jsonl"
        try:
            report = score_file(model=released[0], input_path=source,
                                consortium_key=released[1], purpose="fuzz",
                                state_dir=node_dir, out=out)
        except Exception as exc:
            assert_clean(exc)
            assert not out.exists()  # no results without their log entry
            assert (log.read_bytes().count(b"\n") if log.exists() else 0) == entries
        else:
            assert out.is_file() and log.read_bytes().count(b"\n") == entries + 1
            assert report.log_entry["output"] == str(out.resolve())
        assert source.read_bytes() == data  # the input is never touched
    assert ledger_bytes(node_dir) == before


def _links(tmp: Path, source: Path) -> dict[str, Path]:
    (tmp / "hard").hardlink_to(source)
    (tmp / "soft").symlink_to(source)
    (tmp / "dir").mkdir()
    (tmp / "earlier.jsonl").write_text("an earlier consultation's results\n")
    (tmp / "dangling").symlink_to(tmp / "nowhere")
    return {"same path": source, "hard link": tmp / "hard", "symbolic link": tmp / "soft",
            "relative detour": tmp / "dir" / ".." / source.name, "folder": tmp / "dir",
            "earlier results": tmp / "earlier.jsonl", "dangling link": tmp / "dangling"}


@pytest.mark.parametrize("case", ["same path", "hard link", "symbolic link", "relative detour",
                                  "folder", "earlier results", "dangling link", "the log"])
def test_an_output_that_would_overwrite_anything_is_refused_first(
        tmp_path: Path, released: tuple[Path, Path], case: str) -> None:
    source = tmp_path / "adverts.csv"
    source.write_text(f"advert_id,text\na1,{CANARY} new in town\n", encoding="utf-8")
    data = source.read_bytes()
    state = tmp_path / "state"
    targets = _links(tmp_path, source)
    (state).mkdir()
    (state / CONSULTATION_LOG).write_text("")
    target = state / CONSULTATION_LOG if case == "the log" else targets[case]
    kept = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()}
    with pytest.raises(HeroesError) as err:
        score_file(model=released[0], input_path=source, consortium_key=released[1],
                   purpose="test", state_dir=state, out=target)
    assert_clean(err.value)
    assert "Fix" in str(err.value)
    assert source.read_bytes() == data
    assert {p: p.read_bytes() for p in kept} == kept  # nothing already written changed
    assert (state / CONSULTATION_LOG).read_text() == ""  # refused before it was logged
    assert not (tmp_path / "nowhere").exists()


# --- a consultation that cannot be logged leaves no results ------------------------------------

def _log_fails(state: Path, how: str) -> Iterator[None]:
    """Make appending to the consultation log fail, in a way that holds for root too."""
    import resource

    if how == "log is a folder":
        (state / CONSULTATION_LOG).mkdir(parents=True)
        yield
    elif how == "state folder is a file":
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text("not a folder")
        yield
    else:  # "disk full": the append itself fails part-way (file size limit, EFBIG)
        state.mkdir(parents=True)
        earlier = "".join(json.dumps({"seq": i, "pad": "x" * 200}) + "\n" for i in range(40))
        (state / CONSULTATION_LOG).write_text(earlier)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(earlier.encode()) + 100, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.parametrize("how", ["log is a folder", "state folder is a file", "disk full"])
def test_when_the_consultation_cannot_be_logged_no_results_appear(
        tmp_path: Path, released: tuple[Path, Path], how: str) -> None:
    source = tmp_path / "adverts.csv"
    source.write_text("advert_id,text\na1,new in town call now\na2,cleaning job\n",
                      encoding="utf-8")
    data = source.read_bytes()
    state, out = tmp_path / "node", tmp_path / "results.jsonl"
    log_before = None
    with pytest.raises(HeroesError) as err:
        for _ in _log_fails(state, how):
            if (state / CONSULTATION_LOG).is_file():
                log_before = (state / CONSULTATION_LOG).read_bytes()
            score_file(model=released[0], input_path=source, consortium_key=released[1],
                       purpose="test", state_dir=state, out=out)
    assert "consultation" in str(err.value) and "Fix" in str(err.value)
    assert ("could not be logged" if how == "disk full" else "cannot be opened") in \
        str(err.value), str(err.value)
    assert not out.exists(), "results were written without their log entry"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["adverts.csv", "node"])
    assert source.read_bytes() == data
    if log_before is not None:  # the part of the line that got in was cut off again
        assert (state / CONSULTATION_LOG).read_bytes() == log_before
