"""Service files for a node and for the aggregator: a hardened systemd unit and a logrotate
rule, written for one state folder by ``heroes agency service`` and ``heroes consortium
service``.

The unit runs the command as a dedicated user, with the state folder as the only path it
may write (``ProtectSystem=strict`` + ``ReadWritePaths``), no new privileges, no
capabilities, private /tmp and devices, the kernel, clock, hostname and cgroups out of
reach, sockets limited to IP and Unix, the system-service syscall set, files 0600 by
default (``UMask=0077``, as the code makes them anyway) and a restart on failure.
``systemd-analyze verify`` passes on both and ``systemd-analyze security`` rates them
below 3 ("OK") (tests/test_service_units.py runs both where systemd is installed).

Logs: the SuperNode, SuperExec, SuperLink and gateway write into ``STATE/logs`` through
file descriptors they keep open, so the rule rotates with ``copytruncate`` (the files are
opened for appending: writes carry on at the start of the emptied file).
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("agency", "consortium")

_DESCRIPTION = {
    "agency": "heroes-fl agency node (Flower SuperNode and the signature-checking SuperExec)",
    "consortium": "heroes-fl aggregator (Flower SuperLink, private, and the Fleet gateway)",
}

_HARDENING = """\
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={state}
ProtectHome={home}
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
CapabilityBoundingSet=
AmbientCapabilities=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
"""


def heroes_command() -> Path:
    """The ``heroes`` script of this installation (beside this interpreter), else the one
    on PATH; a DeploymentError with the fix when there is none."""
    import shutil
    import sys

    from federation.errors import DeploymentError

    beside = Path(sys.executable).parent / "heroes"
    if beside.is_file():
        return beside
    found = shutil.which("heroes")
    if found is None:
        raise DeploymentError("no `heroes` command beside this Python or on PATH. Fix: "
                              "install heroes-fl (`make install`) and run this from its venv")
    return Path(found)


def write_service_files(kind: str, *, state_dir: Path, user: str, out: Path) -> list[Path]:
    """The unit and the logrotate rule for ``state_dir``, written into ``out`` (made 0700
    if missing; existing files of the same names are replaced). Returns their paths."""
    from federation.files import private_dir, write_atomic

    if not user or not user.replace("-", "").replace("_", "").isalnum():
        from federation.errors import ConfigError

        raise ConfigError(["--user must be a plain user name (letters, digits, - and _), "
                           "e.g. heroes"], source="service")
    private_dir(out)
    unit = out / unit_name(kind)
    rule = out / f"heroes-{kind}.logrotate"
    write_atomic(unit, systemd_unit(kind, state_dir=state_dir, heroes=heroes_command(),
                                    user=user).encode())
    write_atomic(rule, logrotate_rule(kind, state_dir=state_dir, user=user).encode())
    return [unit, rule]


def unit_name(kind: str) -> str:
    return f"heroes-{kind}.service"


def systemd_unit(kind: str, *, state_dir: Path, heroes: Path, user: str) -> str:
    """The unit that runs ``heroes KIND serve --dir STATE_DIR`` as ``user``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    state = Path(state_dir).resolve()
    under_home = any(p.is_relative_to(h) for p in (state, Path(heroes).resolve())
                     for h in (Path("/home"), Path("/root"), Path("/run/user")))
    # /home and /root are hidden from the service, unless the install or the state lives
    # there (a lab): then read-only, the state folder still its one writable path
    protect_home = "read-only" if under_home else "yes"
    return f"""\
# {unit_name(kind)}: written by `heroes {kind} service` for {state}.
# Install: copy to /etc/systemd/system/, then `systemctl daemon-reload` and
# `systemctl enable --now {unit_name(kind)}`. Check: `heroes {kind} status --dir {state}`
# (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
[Unit]
Description={_DESCRIPTION[kind]}
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=600
StartLimitBurst=5

[Service]
Type=simple
User={user}
Group={user}
WorkingDirectory={state}
Environment=FLWR_TELEMETRY_ENABLED=0
ExecStart={Path(heroes).resolve()} {kind} serve --dir {state}
Restart=on-failure
RestartSec=10
KillMode=mixed
TimeoutStopSec=60
{_HARDENING.format(state=state, home=protect_home)}
[Install]
WantedBy=multi-user.target
"""


def logrotate_rule(kind: str, *, state_dir: Path, user: str) -> str:
    """Weekly rotation of ``STATE_DIR/logs/*.log``, 8 kept, compressed, as ``user``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    state = Path(state_dir).resolve()
    return f"""\
# heroes-{kind}: the logs of {state} (written by `heroes {kind} service`).
# Install: copy to /etc/logrotate.d/heroes-{kind}.
{state}/logs/*.log {{
    su {user} {user}
    weekly
    maxsize 100M
    rotate 8
    compress
    delaycompress
    missingok
    notifempty
    copytruncate
}}
"""
