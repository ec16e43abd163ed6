"""What a node process and a `heroes` command import before doing anything.

A deployed node starts a fresh ClientApp process for every message, and the secure-aggregation
stages that only sign, share or reveal need neither torch nor Opacus (seconds of imports);
nor does any `heroes` command until it trains or computes epsilon. Checked in a clean
interpreter, since this test process has imported everything already."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HEAVY = ("torch", "opacus")


def _imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    return set(out.split())


def test_the_node_app_and_its_light_stages_do_not_import_torch() -> None:
    loaded = _imported_after("import clients.client_app, clients.receipts, federation.ledger")
    assert not [m for m in HEAVY if m in loaded]


def test_the_command_line_parser_does_not_import_torch() -> None:
    loaded = _imported_after(
        "from simulation.cli import main\n"
        "try:\n    main(['agency', 'approvals', '--help'])\nexcept SystemExit:\n    pass")
    assert not [m for m in HEAVY if m in loaded]


def test_accountant_names_agree_with_the_accountants() -> None:
    from federation.config import PrivacySettings
    from federation.privacy import ACCOUNTANTS

    assert sorted(ACCOUNTANTS) == sorted(PrivacySettings.ACCOUNTANTS)
