"""``heroes-verified-clientapp``: Flower's ``flwr-clientapp``, but it checks the app bundle's
signature before installing or importing anything from it.

The agency's own SuperExec (clients/superexec.py) starts this command instead of
``flwr-clientapp`` for every message. Flower's process pulls the message, the run and the
bundle from the node's local Runtime API; here that step is wrapped so the bundle must
carry a valid consortium signature (run config ``app.signature``, see federation/appsign.py)
over its manifest, checked with the consortium public key the agency installed at
``heroes agency init`` (``HEROES_CONSORTIUM_KEY``). A bundle that fails is never installed:
Flower's own error path sends the aggregator a refusal that names the check, and the node's
log says the same. The verified manifest digest is exported as ``HEROES_APP_BUNDLE_SHA256``
for the node's receipts.

A consortium signature is not enough, since the consortium may be the adversary: the bundle's
manifest digest must also be one this agency approved (`heroes agency approve`, recorded in
its signed approvals log, clients/approvals.py; the state folder arrives as
``HEROES_STATE_DIR``). A signed but unapproved bundle is never installed either: it is kept
in ``STATE_DIR/approvals/pending/<digest>.fab`` for the agency to review, and the aggregator
is told that the agency must approve it.

Flower has no public hook for this (its ``--trusted-entities`` check is Enterprise-only), so
this wraps ``flwr.supernode.runtime.run_clientapp.pull_task_input``, an internal function:
flwr is pinned to 1.42.x for that reason, and tests/test_deployment.py exercises it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clients.approvals import STATE_ENV, is_bundle_approved, keep_pending
from federation.appsign import verify_bundle
from federation.errors import DeploymentError, SignatureError

if TYPE_CHECKING:
    from federation.signing import PublicKey

log = logging.getLogger("heroes.verify")

KEY_ENV = "HEROES_CONSORTIUM_KEY"
DIGEST_ENV = "HEROES_APP_BUNDLE_SHA256"


class NotApproved(SignatureError):
    """A bundle the consortium signed but this agency has not approved (kept at ``pending``)."""

    def __init__(self, digest: str, pending: Path, text: str) -> None:
        super().__init__(text)
        self.digest = digest
        self.pending = pending


def check_bundle(state_dir: Path, public_key: PublicKey, fab: bytes, signature: object) -> str:
    """The bundle's manifest digest, once it is signed by the consortium AND approved here.

    Raises SignatureError otherwise, and never installs anything. The signature is checked
    first: a bundle that fails it is not the consortium's and is not kept; a signed bundle
    this agency has not approved is kept in approvals/pending for review. A broken approvals
    log refuses every bundle (the node cannot tell what was approved).
    """
    digest = verify_bundle(public_key, fab, signature)
    try:
        approved = is_bundle_approved(state_dir, digest)
    except DeploymentError as exc:  # e.g. no node.key.pub to check the approvals with
        raise SignatureError(f"this node cannot check its agency's approvals ({exc}); it "
                             "runs no bundle until it can") from None
    if not approved:
        raise NotApproved(digest, keep_pending(state_dir, digest, fab), (
            f"the app bundle (manifest {digest[:16]}) is signed by the consortium but this "
            "agency has not approved it, and the node runs only code its agency approved. Fix "
            f"(agency): review and approve it: `heroes agency approve {digest[:16]} --dir "
            "STATE_DIR` (the node keeps it for review); the consortium can send it with "
            "`heroes consortium bundle`"))
    return digest


def _install_check() -> None:
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode
    from flwr.supernode.runtime import run_clientapp as runtime

    from federation.appsign import RUN_CONFIG_KEY
    from federation.signing import load_public_key

    key_path = os.environ.get(KEY_ENV)
    if not key_path:
        raise SystemExit(f"{KEY_ENV} is not set: this node cannot check app bundles, so it "
                         "runs none. Start the node with `heroes agency serve`.")
    state = os.environ.get(STATE_ENV)
    if not state:
        raise SystemExit(f"{STATE_ENV} is not set: this node runs only app bundles its agency "
                         "approved and cannot find its approvals, so it runs none. Start the "
                         "node with `heroes agency serve`.")
    state_dir = Path(state)
    public_key = load_public_key(Path(key_path))
    pull = runtime.pull_task_input

    def verified_pull(client: Any) -> Any:
        message, context, run, fab = pull(client)
        try:
            digest = check_bundle(state_dir, public_key, fab.content,
                                  context.run_config.get(RUN_CONFIG_KEY))
        except SignatureError as exc:
            log.error("REFUSED app bundle %s of run %s: %s", fab.hash_str[:16], run.run_id, exc)
            if isinstance(exc, NotApproved):
                log.error("REFUSED bundle kept for review in %s; to run it, approve it with "
                          "`heroes agency approve %s --dir %s`", exc.pending, exc.digest,
                          state_dir)
            reason = f"node refused the app bundle of run {run.run_id}: {exc}"
            # Answer the aggregator with the refusal (Flower's own error path has no message
            # to reply to when the failure happens this early), then stop: nothing installed.
            runtime.push_message(client, Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                reply_to=message), context)
            raise SignatureError(reason) from None
        os.environ[DIGEST_ENV] = digest
        log.info("app bundle of run %s verified (manifest %s)", run.run_id, digest[:16])
        return message, context, run, fab

    runtime.pull_task_input = verified_pull


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    _install_check()
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    sys.argv[0] = "heroes-verified-clientapp"
    flwr_clientapp()


if __name__ == "__main__":
    main()
