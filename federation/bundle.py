"""A released model bundle: what it holds and how an agency checks it before use.

A bundle is a folder (readable without tools: an analyst can open ``model_card.md``):

    model.pt              the weights, task name, task parameters and run settings
    model_card.json       the card: versions, agencies, epsilon per agency, DP, metrics, and
                          the SHA-256 of every other file in the bundle
    model_card.md         the same card for people
    model_card.json.sig   the consortium's Ed25519 signature over model_card.json

Only the card is signed; the card pins every other file by its SHA-256, so one flipped byte
anywhere in the bundle fails verification. The consortium writes bundles
(server/release.py); agencies read them here, so clients never import server code.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from federation.errors import SignatureError, TaskError
from federation.signing import PublicKey, file_sha256, verify_file
from federation.tasks import Task, get_task

CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
WEIGHTS = "model.pt"
BUNDLE_FORMAT = "heroes-model-bundle/1"


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature and file digests have been checked."""

    path: Path
    card: dict[str, Any]
    signer: str  # the key fingerprint that signed it

    @property
    def model_version(self) -> str:
        return str(self.card["model_version"])

    def load_model(self) -> tuple[Task, nn.Module]:
        """Build the task's model and load the bundle's weights (weights only, no code)."""
        saved = torch.load(self.path / WEIGHTS, weights_only=True)
        task = get_task(str(saved["task"]), dict(saved["task_params"]))
        made_with = self.card.get("versions", {}).get("features")
        if made_with != task.features_version:
            raise TaskError(
                f"{self.path}: this model was trained on {task.name} features version "
                f"{made_with}, and this heroes-fl computes version {task.features_version}: "
                "its scores would not mean what the card says. Fix: ask the consortium for "
                "a release made with this heroes-fl version, or score with the version that "
                "made this one")
        model = task.build_model()
        model.load_state_dict(saved["state_dict"])
        model.eval()
        return task, model

    @property
    def calibration(self) -> tuple[float, float]:
        """(a, b) in p = sigmoid(a * logit + b)."""
        cal = self.card["calibration"]
        a, b = float(cal["a"]), float(cal["b"])
        if not (math.isfinite(a) and math.isfinite(b)):
            raise SignatureError(f"{self.path}: calibration parameters are not finite")
        return a, b


def verify_bundle(public_key: PublicKey, path: Path) -> VerifiedBundle:
    """Check the card's signature, then every file the card pins; refuse on any mismatch.

    ``path`` is the bundle folder (or its model_card.json).
    """
    bundle = path.parent if path.name == CARD_JSON else path
    if not bundle.is_dir():
        raise SignatureError(
            f"{path} is not a model bundle folder (expected a folder holding {CARD_JSON}, "
            f"{WEIGHTS} and {CARD_JSON}.sig). Fix: pass the folder `heroes consortium release` "
            "wrote."
        )
    card_path = bundle / CARD_JSON
    if not card_path.is_file():
        raise SignatureError(f"{bundle} has no {CARD_JSON}; it is not a released model bundle.")
    document = verify_file(public_key, card_path)
    card = json.loads(card_path.read_text(encoding="utf-8"))
    if card.get("format") != BUNDLE_FORMAT:
        raise SignatureError(
            f"{card_path} has format {card.get('format')!r}; this version reads "
            f"{BUNDLE_FORMAT!r}."
        )
    files = card.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise SignatureError(f"{card_path} does not pin the bundle's files ({WEIGHTS} missing).")
    for name, expected in sorted(files.items()):
        target = bundle / name
        if Path(name).name != name:
            raise SignatureError(f"{card_path} pins {name!r}, which is not a plain file name.")
        if not target.is_file():
            raise SignatureError(f"{bundle}: {name} is missing from the bundle.")
        actual = file_sha256(target)
        if actual != expected:
            raise SignatureError(
                f"{target} was modified after signing: its sha256 is {actual}, the signed card "
                f"pins {expected}. Fix: do not use this bundle; fetch the release again."
            )
    return VerifiedBundle(path=bundle, card=card, signer=str(document["key_fingerprint"]))
