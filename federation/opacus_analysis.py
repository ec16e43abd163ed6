"""Opacus' accountants, loaded without the ``opacus`` package (and so without torch).

Why: ``import opacus.accountants`` first runs ``opacus/__init__.py``, which imports torch and
Opacus' training engine: 6.6 s of the 8 s that ``heroes agency status`` and ``heroes agency
ledger`` took on a loaded 2-core machine, for commands that only read the ledger and report
its epsilon. The accountants' maths needs only numpy and scipy: ``opacus/accountants/
analysis`` (RDP of the subsampled Gaussian, the PRV discretisation and FFT composition) and
the composition in ``RDPAccountant.get_privacy_spent`` and ``PRVAccountant.get_epsilon``.

How: the installed ``opacus/accountants`` folder is located with ``importlib.util.find_spec``
(for a top-level name it finds the package without running it) and mounted under a private
name, ``_heroes_opacus_accountants``, as a package whose ``__init__.py`` is never run. Its
submodules are Opacus' own files, unchanged, imported by the normal import machinery from
that folder: ``rdp`` and ``prv`` (the two accountants), ``analysis.rdp`` and
``analysis.prv.*``. One module is not Opacus': ``accountant``, because Opacus' own
(``accountant.py``) imports ``opacus.optimizers`` (torch) for the optimizer hooks and state
dicts every accountant inherits. Here it is a base class that does what Opacus'
``IAccountant.__init__`` does -- start an empty history -- and nothing else; the epsilon
methods never use anything more. So epsilon is computed by the very code Opacus runs, not a
reimplementation of the maths; tests/test_epsilon_light.py checks it equals Opacus' own
accountants' result on many histories.

The training path (``federation.privacy.make_accountant``, Opacus' ``make_private``) keeps
Opacus' real accountant objects: torch is loaded there anyway. Noise planning
(``get_noise_multiplier``) also stays on Opacus: its module imports the package.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import threading
import types
from pathlib import Path
from typing import Any

from federation.errors import DeploymentError

#: The private name the accountants folder is mounted under (never ``opacus``: code that
#: imports the real package later must get the real one).
PACKAGE = "_heroes_opacus_accountants"

#: The Opacus release whose file layout this loader expects (pyproject pins it).
OPACUS_VERSION = "1.6.0"

_lock = threading.Lock()


class IAccountant:
    """Stands in for ``opacus.accountants.accountant.IAccountant`` (which imports torch).

    Opacus' ``IAccountant.__init__`` sets ``self.history = []`` and the accountants' epsilon
    methods use nothing else of it; its torch-dependent parts (optimizer hook, state dicts)
    are for training, which uses the real class.
    """

    def __init__(self) -> None:
        self.history: list[tuple[float, float, int]] = []


def _accountants_folder() -> Path:
    spec = importlib.util.find_spec("opacus")  # top-level: finds, does not import
    locations = list(spec.submodule_search_locations or []) if spec else []
    folders = [Path(p) / "accountants" for p in locations if (Path(p) / "accountants").is_dir()]
    if not folders:
        raise DeploymentError(
            "Opacus is not installed in this environment, and the privacy ledger's epsilon "
            f"is computed with its accountants. Fix: pip install opacus=={OPACUS_VERSION} "
            "(or reinstall heroes-fl with its dependencies)"
        )
    return folders[0]


@functools.cache
def accountants() -> types.ModuleType:
    """The private package: ``.rdp.RDPAccountant``, ``.prv.PRVAccountant``, ``.analysis``.

    Loaded once per process (a few tenths of a second: numpy and scipy)."""
    with _lock:
        if PACKAGE in sys.modules:
            return sys.modules[PACKAGE]
        folder = _accountants_folder()
        spec = importlib.util.spec_from_file_location(
            PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        assert spec is not None  # a file location always gives a spec
        package = importlib.util.module_from_spec(spec)  # created, its __init__ never run
        base = types.ModuleType(f"{PACKAGE}.accountant", IAccountant.__doc__)
        base.IAccountant = IAccountant  # type: ignore[attr-defined]
        sys.modules[PACKAGE] = package
        sys.modules[base.__name__] = base
        try:
            for name in ("rdp", "prv", "analysis.rdp", "analysis.prv"):
                importlib.import_module(f"{PACKAGE}.{name}")
        except ImportError as exc:
            for name in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
                del sys.modules[name]
            raise DeploymentError(
                f"Opacus' accountants in {folder} do not have the layout of Opacus "
                f"{OPACUS_VERSION} ({exc}); the privacy ledger's epsilon is computed with "
                f"them. Fix: pip install opacus=={OPACUS_VERSION}"
            ) from exc
        return package


def rdp_accountant(history: Any = ()) -> Any:
    """Opacus' RDPAccountant (its own code, torch-free), primed with ``history``."""
    accountant = accountants().rdp.RDPAccountant()
    accountant.history = list(history)
    return accountant


def prv_accountant(history: Any = ()) -> Any:
    """Opacus' PRVAccountant (its own code, torch-free), primed with ``history``."""
    accountant = accountants().prv.PRVAccountant()
    accountant.history = list(history)
    return accountant
