"""The agency's SuperExec: Flower's ``flower-superexec`` launching our verifying ClientApp.

``heroes agency serve`` runs the SuperNode with ``--isolation process`` and this process next
to it. It is Flower's SuperExec unchanged except for the command it starts per message:
``heroes-verified-clientapp`` (clients/verified_clientapp.py) instead of ``flwr-clientapp``,
so no bundle code runs at the agency before its signature is checked. The mapping it changes
(``flwr.supercore.constant.TASK_TYPE_TO_COMMAND``) is internal to flwr 1.42, which is pinned.
"""

from __future__ import annotations

import sys

COMMAND = "heroes-verified-clientapp"


def main() -> None:
    from flwr.supercore import constant
    from flwr.supercore.cli.flower_superexec import flower_superexec

    constant.TASK_TYPE_TO_COMMAND[constant.TaskType.CLIENT_APP] = COMMAND
    sys.argv[0] = "heroes-agency-superexec"
    flower_superexec()


if __name__ == "__main__":
    main()
