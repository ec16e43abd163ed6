"""SecAgg+ building blocks: key agreement, masks, Shamir shares, quantisation, packing.

The protocol (Bell et al. 2020, "SecAgg+"), as run by server/secagg.py and clients/secagg.py:

1. setup: each sampled node makes two X25519 key pairs, one to encrypt shares (c) and one
   to agree pairwise masks (s), and a 32-byte self-mask seed b; it returns the public keys.
2. share: each node splits its s secret key and b into Shamir shares (threshold t) for its
   neighbours in a sparse ring graph (itself included), encrypts each with a key agreed
   with that neighbour (ChaCha20-Poly1305), and hands them to the server to deliver.
3. masked input: each node trains, quantises its weighted update into integers modulo
   2**bits, adds the self mask PRG(b) and, for every neighbour j, +PRG(s_ij) if i < j and
   -PRG(s_ij) otherwise, and uploads the result packed in ``bits`` bits per value.
4. unmask: for every surviving neighbour the node reveals its share of b; for every
   neighbour that dropped out, its share of s. The server rebuilds those secrets, removes
   the masks, and learns the sum, nothing else: the pairwise masks of survivors cancel.

Unlike Flower's SecAgg+ (which folds the shared key into a 32-bit seed for numpy's
Mersenne Twister), every mask here is a ChaCha20 keystream keyed by the full 256-bit
HKDF output of the X25519 secret, and masked vectors travel packed at the modulus' width.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from federation.errors import FederationError

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

PRIME = 2**521 - 1  # Mersenne prime: the Shamir field (secrets are 256-bit)
MASK_INFO = b"heroes-fl secagg+ mask v1"
SHARE_INFO = b"heroes-fl secagg+ share key v1"
_NONCE = b"\x00" * 16  # every ChaCha20 key is used for exactly one stream


# --- keys -----------------------------------------------------------------------------------

def new_keypair() -> tuple[bytes, bytes]:
    """(private, public) X25519 key pair as raw 32-byte strings."""
    sk = X25519PrivateKey.generate()
    pk = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raw = sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                           serialization.NoEncryption())
    return raw, pk


def agree(private: bytes, peer_public: bytes, *, info: bytes, context: bytes) -> bytes:
    """A 32-byte key from X25519 + HKDF-SHA256, bound to ``info`` and ``context``."""
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=info + b"|" + context).derive(shared)


def pair_context(round_id: bytes, a: int, b: int) -> bytes:
    lo, hi = sorted((a, b))
    return round_id + struct.pack(">QQ", lo, hi)


# --- masks --------------------------------------------------------------------------------

def mask_stream(key: bytes, length: int, bits: int) -> np.ndarray:
    """``length`` uniform integers modulo 2**bits from ChaCha20 keyed by all 32 bytes."""
    if len(key) != 32:
        raise ValueError("mask keys are 32 bytes")
    words = 2 if bits > 32 else 1
    enc = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    raw = enc.update(b"\x00" * (4 * words * length))
    values = np.frombuffer(raw, dtype="<u8" if words == 2 else "<u4").astype(np.uint64)
    return values & np.uint64((1 << bits) - 1)


# --- model arrays as one vector -----------------------------------------------------------

def flatten(arrays: ArrayRecord) -> tuple[np.ndarray, list[tuple[str, tuple[int, ...], str]]]:
    parts, layout = [], []
    for key, arr in arrays.items():
        a = arr.numpy()
        layout.append((key, tuple(a.shape), str(a.dtype)))
        parts.append(a.astype(np.float64).reshape(-1))
    return np.concatenate(parts), layout


def unflatten(flat: np.ndarray, layout: list[tuple[str, tuple[int, ...], str]]) -> ArrayRecord:
    from flwr.app import Array, ArrayRecord

    out: dict[str, Array] = {}
    pos = 0
    for key, shape, dtype in layout:
        n = int(np.prod(shape)) if shape else 1
        out[key] = Array(flat[pos:pos + n].reshape(shape).astype(dtype))
        pos += n
    return ArrayRecord(out)


# --- quantisation and packing ---------------------------------------------------------------

def modulus_bits(quantization_bits: int, num_nodes: int) -> int:
    """Bits of the modulus such that the sum of ``num_nodes`` quantised values never wraps."""
    return quantization_bits + max(1, math.ceil(math.log2(max(num_nodes, 2))))


def quantize(x: np.ndarray, *, clip: float, qbits: int) -> tuple[np.ndarray, int]:
    """Integers in [0, 2**qbits - 1] for values clipped to [-clip, clip]; and how many were
    clipped (reported by the node: clipping changes the aggregate)."""
    levels = (1 << qbits) - 1
    clipped = int(np.count_nonzero(np.abs(x) > clip))
    y = (np.clip(x.astype(np.float64), -clip, clip) + clip) * (levels / (2 * clip))
    # stochastic rounding keeps the sum unbiased
    floor = np.floor(y)
    y = floor + (np.random.default_rng(secrets.randbits(64)).random(y.shape) < (y - floor))
    return y.astype(np.uint64), clipped


def dequantize_sum(total: np.ndarray, count: int, *, clip: float, qbits: int) -> np.ndarray:
    """The real-valued sum of ``count`` quantised vectors from their integer sum."""
    levels = (1 << qbits) - 1
    return total.astype(np.float64) * (2 * clip / levels) - count * clip


def pack(values: np.ndarray, bits: int) -> bytes:
    """Little-endian bit packing: ``bits`` bits per value, no padding between values."""
    v = values.astype(np.uint64)
    bitmat = ((v[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bitmat.reshape(-1), bitorder="little").tobytes()


def unpack(data: bytes, bits: int, length: int) -> np.ndarray:
    if len(data) != math.ceil(length * bits / 8):
        raise FederationError(f"a masked vector has {len(data)} bytes; {length} values of "
                              f"{bits} bits need {math.ceil(length * bits / 8)}")
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    bitmat = flat[: length * bits].reshape(length, bits).astype(np.uint64)
    out: np.ndarray = (bitmat << np.arange(bits, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
    return out


# --- Shamir secret sharing over GF(2**521 - 1) ---------------------------------------------

def split(secret: bytes, *, threshold: int, xs: Sequence[int]) -> dict[int, int]:
    """Shares of a <= 64-byte secret at the points ``xs`` (non-zero, distinct)."""
    s = int.from_bytes(secret, "big")
    if s >= PRIME:
        raise ValueError("secret too large for the field")
    coeffs = [s] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out = {}
    for x in xs:
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % PRIME
        out[x] = acc
    return out


def combine(shares: dict[int, int], *, threshold: int, length: int = 32) -> bytes:
    """The secret from at least ``threshold`` shares (Lagrange interpolation at 0)."""
    if len(shares) < threshold:
        raise FederationError(f"only {len(shares)} share(s), {threshold} needed to unmask")
    pts = list(shares.items())[:threshold]
    secret = 0
    for i, (xi, yi) in enumerate(pts):
        num, den = 1, 1
        for j, (xj, _) in enumerate(pts):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, PRIME - 2, PRIME)) % PRIME
    return secret.to_bytes(length, "big")


# --- encrypted share bundles ----------------------------------------------------------------

def seal(key: bytes, sender: int, receiver: int, round_id: bytes, payload: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    aad = round_id + struct.pack(">QQ", sender, receiver)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, payload, aad)


def open_sealed(key: bytes, sender: int, receiver: int, round_id: bytes, box: bytes) -> bytes:
    aad = round_id + struct.pack(">QQ", sender, receiver)
    try:
        return ChaCha20Poly1305(key).decrypt(box[:12], box[12:], aad)
    except Exception:  # cryptography raises InvalidTag; anything else is as bad
        raise FederationError(f"a share from node {sender} failed authentication; the "
                              "round cannot use it") from None


def encode_shares(sk_share: int, b_share: int) -> bytes:
    return sk_share.to_bytes(66, "big") + b_share.to_bytes(66, "big")


def decode_shares(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[:66], "big"), int.from_bytes(data[66:132], "big")


# --- the graph --------------------------------------------------------------------------------

def neighbours(nodes: Sequence[int], degree: int) -> dict[int, list[int]]:
    """SecAgg+'s sparse graph: each node's ``degree`` nearest others on a ring ordered by
    a hash of the node ids (so the server cannot pick who neighbours whom by id choice
    alone). ``degree`` 0 means automatic: everyone up to 10 nodes, else
    ``2 * ceil(log2 n) + 2`` (16 for 100 nodes), SecAgg+'s logarithmic degree."""
    order = sorted(nodes, key=lambda n: hashlib.sha256(str(n).encode()).digest())
    n = len(order)
    if degree <= 0:
        degree = n - 1 if n <= 10 else 2 * math.ceil(math.log2(n)) + 2
    if degree >= n - 1:
        return {a: [b for b in order if b != a] for a in order}
    half, extra = divmod(degree, 2)
    out: dict[int, list[int]] = {}
    for i, a in enumerate(order):
        near = [order[(i + k) % n] for k in range(1, half + extra + 1)]
        near += [order[(i - k) % n] for k in range(1, half + 1)]
        out[a] = sorted(set(near))
    # make it symmetric: masks need both ends
    for a, ns in list(out.items()):
        for b in ns:
            if a not in out[b]:
                out[b] = sorted({*out[b], a})
    return out


def share_threshold(neighbourhood: int, fraction: float) -> int:
    """Shares needed to rebuild a node's secret; its neighbourhood counts itself. At least
    2, so no single neighbour can unmask a node together with the server."""
    return max(2, math.ceil(fraction * neighbourhood))
