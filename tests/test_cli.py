"""The command tree itself: one registration style, one flag vocabulary, documented exit
codes. Walks the real parser that ``heroes`` builds (cli/main.py)."""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import exit
from cli.main import build_parser, main
from tests._heroes import HEROES

ROOT = Path(__file__).resolve().parents[1]


def _leaves(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every command parser (those without subcommands) under ``parser``."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
    for action in subs:
        for child in action.choices.values():
            yield from _leaves(child)


def test_every_command_is_registered_one_way() -> None:
    parser, commands = build_parser()
    leaves = list(_leaves(parser))
    assert len(leaves) >= 25  # every command of the four user modules
    for leaf in leaves:
        runs = [leaf.get_default("run"), leaf.get_default("raw_run")]
        assert sum(r is not None for r in runs) == 1, leaf.prog
        assert leaf.get_default("command_name") == leaf.prog
    raw = sorted(n for n, p in commands.items() if p.get_default("raw_run") is not None)
    assert raw == ["bench", "report", "simulate", "sweep-table"]


def test_one_flag_for_a_state_folder_and_json_for_tables() -> None:
    parser, _ = build_parser()
    flags = {leaf.prog: {s for a in leaf._actions for s in a.option_strings}
             for leaf in _leaves(parser)}
    assert not [prog for prog, f in flags.items() if "--state-dir" in f]
    for prog in ("agency status", "agency ledger", "agency check", "agency approvals",
                 "agency audit show", "consortium roster", "consortium ledger-heads",
                 "consortium status", "privacy epsilon", "privacy plan"):
        assert "--json" in flags[f"heroes {prog}"], prog
    for prog in ("agency init", "agency serve", "agency status", "agency ledger",
                 "agency approve", "agency approvals", "agency score", "agency audit verify",
                 "agency audit show", "agency console", "agency service", "consortium init",
                 "consortium serve", "consortium ledger-heads", "consortium status",
                 "consortium service", "consortium provision"):
        assert "--dir" in flags[f"heroes {prog}"], prog


def test_help_documents_every_exit_code() -> None:
    text = subprocess.run([*HEROES, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=True).stdout
    for name in ("OK", "PROBLEM", "USAGE"):
        assert f"{getattr(exit, name)}  {name}" in text


def test_a_state_error_exits_usage_and_a_bad_flag_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agency", "ledger", "--dir", str(tmp_path / "nowhere")]) == exit.USAGE
    assert "no privacy ledger here. Fix: check --dir" in capsys.readouterr().out
    assert main(["consortium", "ledger-heads", "--dir", str(tmp_path)]) == exit.OK
    with pytest.raises(SystemExit) as bad:
        main(["agency", "ledger", "--state-dir", str(tmp_path)])
    assert bad.value.code == exit.USAGE
    assert "the following arguments are required: --dir" in capsys.readouterr().err
    assert main(["agency", "audit", "verify", "--dir", str(tmp_path)]) == exit.USAGE
    err = capsys.readouterr().err
    assert err.startswith("heroes agency audit verify: ") and "Traceback" not in err
