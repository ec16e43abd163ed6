"""Every error heroes-fl raises on purpose, in one tree.

    HeroesError
    ├── ConfigError          a setting is missing, unknown, of the wrong type or out of range
    │   └── PrivacyConfigError   a privacy parameter is missing or impossible
    ├── DataError            an agency's files cannot be used as they are
    ├── TaskError            an unknown task name, or a task used against its contract
    ├── FederationError      a round could not be completed as configured
    │   └── QuorumError          fewer agencies replied than the configured quorum
    ├── DeploymentError      a consortium or agency deployment step cannot go ahead
    │                        (keys, certificates, addresses, registrations, processes)
    ├── SignatureError       a signature is missing, malformed, or does not verify
    └── LedgerError          the privacy ledger is unusable (corrupt, foreign, rolled back)
        └── PolicyError          the agency's policy file is missing or unusable

Each message says what arrived, what is allowed, and how to fix it. Messages never quote
advert text or any other record content: errors leave the agency in logs and replies, so
they name files, rows and columns only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class HeroesError(Exception):
    """Base of every deliberate heroes-fl error."""


class ConfigError(HeroesError):
    """One or more settings are unusable; all problems are listed at once."""

    def __init__(self, problems: Iterable[str], *, source: str = "configuration") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}")


class PrivacyConfigError(ConfigError):
    """A privacy parameter is missing or cannot give the guarantee asked for."""


class DataError(HeroesError):
    """An agency's data cannot be used; names the file and row, never the content."""

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        row: int | None = None,
        fix: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.row = row
        self.fix = fix
        where = ""
        if self.path is not None:
            where = f"{self.path}"
            if row is not None:
                where += f", row {row}"
            where += ": "
        text = f"{where}{message}"
        if fix:
            text += f" Fix: {fix}"
        super().__init__(text)


class TaskError(HeroesError):
    """An unknown task, or a task used against its contract."""


class FederationError(HeroesError):
    """A federated round could not be completed as configured."""


class QuorumError(FederationError):
    """Fewer agencies replied usefully than the configured quorum."""


class DeploymentError(HeroesError):
    """A deployment step cannot go ahead: says what is wrong and what to do."""


class SignatureError(HeroesError):
    """A signed file (app bundle, model release, receipt) failed verification."""


class LedgerError(HeroesError):
    """The privacy ledger (or its head, its key, the agency's policy) is unusable: corrupt,
    foreign, cut short, rolled back. The ledger file is always left exactly as it was."""


class PolicyError(LedgerError):
    """The agency's privacy policy is unusable; every problem is listed at once.

    A subclass of LedgerError because callers already treat "no usable policy" and "no
    usable ledger" alike: the node does not train.
    """

    def __init__(self, problems: Iterable[str], *, source: str) -> None:
        self.problems = list(problems)
        self.source = source
        if len(self.problems) == 1:  # one problem reads as one sentence
            super().__init__(f"{source}: {self.problems[0]}")
        else:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            super().__init__(f"{source} has {len(self.problems)} problems:\n{listed}")
