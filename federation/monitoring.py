"""Monitoring-ready status: the Nagios plugin convention for ``agency status`` and
``consortium status``.

A check's exit code is its worst finding: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the
status itself could not be determined: not a node folder, an unreadable file). Nagios,
Icinga, Zabbix's external checks, Prometheus' script exporters and systemd's own
``ExecCondition`` read these four; every other ``heroes`` command keeps cli/exit.py's
0/1/2. The first line of the text output is the plugin's one-line summary
(``HEROES-AGENCY CRITICAL - 2 problems: ...``); ``--json`` gives every finding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LEVEL_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


@dataclass(frozen=True)
class Finding:
    """One check: its level, what it looked at, and what it found (with the fix when the
    level is not OK). Never a value read from an agency's data."""

    level: int
    check: str
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"level": LEVEL_NAMES[self.level].lower(), "check": self.check,
                "text": self.text}


def worst(findings: list[Finding]) -> int:
    return max((f.level for f in findings), default=OK)


def summary(service: str, findings: list[Finding]) -> str:
    """The plugin's first line: the worst level, then the findings at that level."""
    level = worst(findings)
    if level == OK:
        return f"{service} OK - {len(findings)} checks passed"
    bad = [f for f in findings if f.level == level]
    return (f"{service} {LEVEL_NAMES[level]} - {len(bad)} "
            f"{'problem' if len(bad) == 1 else 'problems'}: "
            + "; ".join(f"{f.check}: {f.text}" for f in bad))


def report(findings: list[Finding]) -> dict[str, Any]:
    """What ``--json`` adds: the level, its exit code and every finding."""
    level = worst(findings)
    return {"level": LEVEL_NAMES[level].lower(), "exit_code": level,
            "checks": [f.to_json() for f in findings]}


def grpc_health(address: str, *, timeout: float = 3.0) -> str:
    """The gRPC health check's answer at ``address`` (SERVING, NOT_SERVING, ...), or
    "unreachable (<code>)": what a SuperNode's and a SuperLink's health endpoints say."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return f"unreachable ({exc.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
