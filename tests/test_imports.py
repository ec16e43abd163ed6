"""What a node process and a `heroes` command import before doing anything.

A deployed node starts a fresh ClientApp process for every message, and the secure-aggregation
stages that only sign, share or reveal need neither torch nor Opacus (seconds of imports);
nor does any `heroes` command until it trains or plans noise (epsilon itself is computed with
Opacus' accountant code loaded without its package, federation/opacus_analysis.py). Checked
in a clean interpreter, since this test process has imported everything already."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

from federation import opacus_analysis
from tests._wait import DEADLINE_S

ROOT = Path(__file__).resolve().parents[1]

HEAVY = ("torch", "opacus")


def _imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=DEADLINE_S, check=True).stdout
    return set(out.split())


def test_the_node_app_and_its_light_stages_do_not_import_torch() -> None:
    loaded = _imported_after("import clients.client_app, clients.receipts, federation.ledger")
    assert not [m for m in HEAVY if m in loaded]


def test_the_command_line_parser_does_not_import_torch() -> None:
    loaded = _imported_after(
        "from cli.main import main\n"
        "try:\n    main(['agency', 'approvals', '--help'])\nexcept SystemExit:\n    pass")
    assert not [m for m in HEAVY if m in loaded]


#: What a command that does not train must not import: the training stack, and the research
#: package with its configuration system (an agency's node has no business loading them).
NOT_AT_START = ("torch", "opacus", "flwr", "hydra", "omegaconf", "simulation")


def _top_level_after(argv: list[str]) -> tuple[int, set[str]]:
    """Run ``heroes ARGV`` through the real entry point in a fresh interpreter; its exit
    code and the top-level packages it had imported when it finished."""
    code = ("import sys\nfrom cli.main import main\n"
            f"try:\n    code = main({argv!r})\nexcept SystemExit as exc:\n"
            "    code = exc.code\n"
            "sys.stdout.write('\\nMODULES ' + ' '.join(sorted({m.split('.')[0] "
            "for m in sys.modules})) + f' CODE {code}\\n')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=True)
    line = proc.stdout.rsplit("MODULES ", 1)[1].split()
    return int(line[-1]), set(line[:-2])


@pytest.fixture(scope="module")
def node_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, initialised agency state folder (made by the CLI itself), no round trained."""
    work = tmp_path_factory.mktemp("node")
    (work / "data").mkdir()
    for argv in (["consortium", "init", "--dir", str(work / "c"), "--public-address",
                  "127.0.0.1:9092"],
                 ["agency", "init", "--dir", str(work / "a"), "--name", "es-police",
                  "--data-dir", str(work / "data"), "--consortium", "127.0.0.1:9092",
                  "--ca-cert", str(work / "c" / "tls" / "ca.crt"), "--consortium-key",
                  str(work / "c" / "signing.pub"), "--max-epsilon", "10", "--delta", "1e-5"]):
        assert _top_level_after(argv)[0] == 0
    return work / "a"


@pytest.mark.parametrize("argv", [
    ["--help"], ["agency", "--help"], ["consortium", "--help"], ["privacy", "--help"],
    ["agency", "status", "--help"], ["agency", "ledger", "--help"],
    ["consortium", "ledger-heads", "--help"],
])
def test_help_imports_no_training_stack_and_no_hydra(argv: list[str]) -> None:
    code, loaded = _top_level_after(argv)
    assert code == 0
    assert sorted(m for m in NOT_AT_START if m in loaded) == []


@pytest.mark.parametrize("command", [["agency", "status", "--json"], ["agency", "ledger"],
                                     ["agency", "approvals"], ["agency", "audit", "show"]])
def test_agency_commands_that_read_state_import_no_training_stack(
        node_state: Path, command: list[str]) -> None:
    code, loaded = _top_level_after([*command, "--dir", str(node_state)])
    assert code in (0, 2)  # a node that never trained has no ledger: 2, with the fix
    assert sorted(m for m in NOT_AT_START if m in loaded) == []


def _exit_of(command: list[str]) -> int:
    """`agency status` exits by the Nagios convention: this node was never started, so
    CRITICAL (2); the other commands succeed (0)."""
    return 2 if command[:2] == ["agency", "status"] else 0


@pytest.fixture(scope="module")
def trained_node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real node whose privacy ledger holds two trained rounds, written by the ledger's
    own code (cli/_coldstart.py makes the folder it times the same way)."""
    from cli._coldstart import make_state

    return make_state(ROOT, tmp_path_factory.mktemp("trained"))


@pytest.mark.parametrize("command", [["agency", "status", "--json"], ["agency", "ledger"],
                                     ["agency", "ledger", "--json"]])
def test_reading_a_trained_nodes_epsilon_imports_neither_torch_nor_opacus(
        trained_node: Path, command: list[str]) -> None:
    """Epsilon comes from Opacus' accountant files loaded without the opacus package
    (federation/opacus_analysis.py): no torch, no ``opacus`` top-level package."""
    from federation.epsilon_cache import CACHE_FILE

    (trained_node / CACHE_FILE).unlink(missing_ok=True)  # as after a new round
    code, loaded = _top_level_after([*command, "--dir", str(trained_node)])
    assert code == _exit_of(command)
    assert opacus_analysis.PACKAGE in loaded  # an epsilon was computed, torch-free
    assert sorted(m for m in NOT_AT_START if m in loaded) == []


@pytest.mark.parametrize("command", [["agency", "status", "--json"], ["agency", "ledger"]])
def test_epsilons_already_computed_import_no_accountant_or_scipy(
        trained_node: Path, command: list[str]) -> None:
    """Once a report computed the epsilons of these releases (epsilon-cache.json), the
    next one reads them: no accountant code and no scipy are imported at all."""
    assert _top_level_after(["agency", "ledger", "--dir", str(trained_node)])[0] == 0
    code, loaded = _top_level_after([*command, "--dir", str(trained_node)])
    assert code == _exit_of(command)
    assert opacus_analysis.PACKAGE not in loaded and "scipy" not in loaded


def test_consortium_ledger_heads_imports_no_training_stack(tmp_path: Path) -> None:
    code, loaded = _top_level_after(["consortium", "ledger-heads", "--dir", str(tmp_path)])
    assert code == 0
    assert sorted(m for m in NOT_AT_START if m in loaded) == []


def test_privacy_epsilon_imports_no_training_stack() -> None:
    """Computing epsilon needs Opacus' accountant code, not its package (and so no torch)."""
    code, loaded = _top_level_after(["privacy", "epsilon", "--noise-multiplier", "1.0",
                                     "--sample-rate", "0.01", "--steps", "100",
                                     "--delta", "1e-5"])
    assert code == 0 and opacus_analysis.PACKAGE in loaded  # it did compute an epsilon
    assert sorted(m for m in NOT_AT_START if m in loaded) == []


def test_privacy_input_errors_exit_2_before_importing_the_accountants() -> None:
    code, loaded = _top_level_after(["privacy", "epsilon", "--noise-multiplier", "x",
                                     "--delta", "1e-5"])
    assert code == 2
    assert sorted(m for m in NOT_AT_START if m in loaded) == []


def test_accountant_names_agree_with_the_accountants() -> None:
    from federation.config import PrivacySettings
    from federation.privacy import ACCOUNTANTS

    assert sorted(ACCOUNTANTS) == sorted(PrivacySettings.ACCOUNTANTS)


def _first_party_packages() -> list[str]:
    """The packages import-linter checks (pyproject's [tool.importlinter]): one list."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return list(tomllib.load(fh)["tool"]["importlinter"]["root_packages"])


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_between_first_party_modules() -> None:
    """A cycle hidden by moving an import into a function is still a cycle: grimp's graph
    holds every import, at module level or inside a function. (import-linter's layers catch
    cycles between layers; this catches them inside one.)"""
    graph = grimp.build_graph(*_first_party_packages())
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    cycles = _cycles(edges)
    described = []
    for component in cycles:
        lines = [f"  {d['importer']}:{d['line_number']} {d['line_contents']}"
                 for a in component for b in sorted(edges[a] & set(component))
                 for d in graph.get_import_details(importer=a, imported=b)]
        described.append(" <-> ".join(component) + "\n" + "\n".join(lines))
    assert not cycles, "import cycles:\n" + "\n".join(described)


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
