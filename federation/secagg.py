"""SecAgg+ building blocks: keys, masks, Shamir shares, signatures, vector codecs, the graph.

The protocol (Bonawitz et al. 2017, malicious-model variant, on Bell et al. 2020's sparse
graph), as run by server/secagg.py (the aggregator, which is NOT trusted) and clients/secagg.py
(the agency node, which enforces every safety rule itself):

1. setup: each node makes a fresh X25519 key pair ``c`` to seal shares, and for every sum of
   the session (``train``, ``evaluate``) a 16-byte seed ``s`` (its X25519 mask key) and a
   16-byte self-mask seed ``b``. It signs its public keys with its enrolled node key, bound
   to the session (run, round, server nonce) and to its node id and agency name.
2. share: the server sends each node the session's node ids (8 bytes each) and the signed
   keys of that node's neighbourhood only (O(neighbours) keys per node, not everyone's).
   Each node derives the neighbour graph from the ids itself, checks every signature it is
   sent against the roster its agency approved (no Sybils, no substituted keys, each agency
   once) and that every neighbour's keys are there, derives its share threshold, refuses
   parameters below its policy, splits every ``s`` and ``b`` into Shamir shares for its
   neighbours and seals each bundle with ChaCha20-Poly1305 under a key agreed with that
   neighbour.
3. masked input (once per sum): the node encodes its vector (a count-weighted update and its
   count, or evaluation histograms) as integers, adds PRG(b) and, for each neighbour j that
   delivered shares, +PRG(s_ij) if i < j else -PRG(s_ij), and uploads the result packed at
   the modulus width.
4. consistency: the server sends the survivors (nodes whose masked input it received), one
   bit per node of the session; each survivor signs that exact set, bound to the session
   and the sum.
5. unmask: a node reveals shares only after verifying at least ``t`` (and at least its
   policy's ``min_agencies``) valid signatures over the very same set from distinct
   rostered nodes of its own neighbourhood, itself included; it reveals, per neighbour, the
   ``b`` share (survivor) or the ``s`` share (dropped), never both, once.

Why 2t > g (the threshold is a strict majority of each neighbourhood of g nodes): every
holder reveals one kind of share per owner, so a server needs t + t distinct holders to get
both secrets of one node; and why a node masks only after at least g - t + 1 neighbours
delivered shares: otherwise a server could leave it with masks only towards nodes it then
declares dropped.

Unlike Flower's SecAgg+ (which folds the shared key into a 32-bit seed for numpy's Mersenne
Twister), every mask is a ChaCha20 keystream keyed by the full 256-bit HKDF output of an
X25519 secret or of a 128-bit seed (the security level of X25519 itself), shares live in
GF(2^130 - 5) (17 bytes each), and masked vectors travel packed at the modulus' width.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import ArrayLike

from federation.errors import FederationError
from federation.metrics import SCORE_BINS

PRIME = 2**130 - 5  # Poly1305's prime: the Shamir field; seeds are 128-bit
SEED_BYTES = 16
SHARE_BYTES = 17  # ceil(130 / 8)
MASK_INFO = b"heroes-fl secagg+ mask v2"
SELF_INFO = b"heroes-fl secagg+ self mask v2"
SEED_KEY_INFO = b"heroes-fl secagg+ x25519 key from seed v2"
SHARE_INFO = b"heroes-fl secagg+ share key v2"
SESSION_DOMAIN = b"heroes-fl secagg+ session v2"
KEYS_DOMAIN = b"heroes-fl secagg+ signed keys v2"
SURVIVORS_DOMAIN = b"heroes-fl secagg+ survivors v2"
SUMS = ("train", "evaluate")
_NONCE = b"\x00" * 16  # every ChaCha20 key is used for exactly one stream


# --- keys -----------------------------------------------------------------------------------

def new_keypair() -> tuple[bytes, bytes]:
    """(private, public) X25519 key pair as raw 32-byte strings."""
    sk = X25519PrivateKey.generate()
    pk = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raw = sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                           serialization.NoEncryption())
    return raw, pk


def new_seed() -> bytes:
    return secrets.token_bytes(SEED_BYTES)


def _hkdf(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)


def seed_keypair(seed: bytes) -> tuple[bytes, bytes]:
    """The X25519 mask key pair a 16-byte seed stands for (the seed is what gets shared)."""
    if len(seed) != SEED_BYTES:
        raise ValueError("mask seeds are 16 bytes")
    sk = X25519PrivateKey.from_private_bytes(_hkdf(seed, SEED_KEY_INFO))
    raw = sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                           serialization.NoEncryption())
    pk = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw, pk


def self_mask_key(seed: bytes, context: bytes) -> bytes:
    """The 32-byte ChaCha20 key of a node's self mask, from its 16-byte seed."""
    if len(seed) != SEED_BYTES:
        raise ValueError("self-mask seeds are 16 bytes")
    return _hkdf(seed, SELF_INFO + b"|" + context)


def agree(private: bytes, peer_public: bytes, *, info: bytes, context: bytes) -> bytes:
    """A 32-byte key from X25519 + HKDF-SHA256, bound to ``info`` and ``context``."""
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public))
    return _hkdf(shared, info + b"|" + context)


def session_id(run_id: str, server_round: int, nonce: bytes) -> bytes:
    """What every signature and AEAD context of one session is bound to. The node computes
    it from its own run id, so a session of another run or round can never be replayed."""
    return hashlib.sha256(b"|".join((SESSION_DOMAIN, run_id.encode(), str(server_round).encode(),
                                     nonce))).digest()


def pair_context(session: bytes, sum_name: str, a: int, b: int) -> bytes:
    lo, hi = sorted((a, b))
    return session + sum_name.encode() + struct.pack(">QQ", lo, hi)


def _lv(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def keys_message(session: bytes, node_id: int, agency: str, c_pk: bytes,
                 s_pks: Mapping[str, bytes]) -> bytes:
    """The bytes a node signs over its public keys (length-prefixed, unambiguous)."""
    parts = [KEYS_DOMAIN, session, struct.pack(">Q", node_id), _lv(agency.encode()), _lv(c_pk)]
    for name in sorted(s_pks):
        parts += [_lv(name.encode()), _lv(s_pks[name])]
    return b"".join(parts)


def survivors_message(session: bytes, sum_name: str, survivors: Sequence[int]) -> bytes:
    """The bytes a survivor signs in the consistency round: this exact set, this sum."""
    ids = sorted(set(survivors))
    return b"".join([SURVIVORS_DOMAIN, session, _lv(sum_name.encode()),
                     struct.pack(">I", len(ids)), *(struct.pack(">Q", n) for n in ids)])


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

ArrayLayout = list[tuple[str, tuple[int, ...], str]]


def flatten(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, ArrayLayout]:
    """Named arrays as one float64 vector and the layout to undo it. Plain numpy, so that
    federation/ stays free of Flower: clients/ and server/ convert their ArrayRecords."""
    parts, layout = [], []
    for key, a in arrays.items():
        layout.append((key, tuple(a.shape), str(a.dtype)))
        parts.append(a.astype(np.float64).reshape(-1))
    return np.concatenate(parts), layout


def unflatten(flat: np.ndarray, layout: ArrayLayout) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    pos = 0
    for key, shape, dtype in layout:
        n = int(np.prod(shape)) if shape else 1
        out[key] = flat[pos:pos + n].reshape(shape).astype(dtype)
        pos += n
    return out


# --- quantisation, vector layouts and packing -----------------------------------------------

def modulus_bits(quantization_bits: int, num_nodes: int) -> int:
    """Bits of the modulus such that the sum of ``num_nodes`` quantised values never wraps."""
    return quantization_bits + max(1, math.ceil(math.log2(max(num_nodes, 2))))


def quantize(x: np.ndarray, *, lo: float, hi: float, qbits: int) -> tuple[np.ndarray, int]:
    """Integers in [0, 2**qbits - 1] for values clipped to [lo, hi]; and how many were
    clipped (reported by the node: clipping changes the aggregate). Stochastic rounding keeps
    the sum unbiased."""
    levels = (1 << qbits) - 1
    xf = np.asarray(x, dtype=np.float64)
    clipped = int(np.count_nonzero((xf < lo) | (xf > hi)))
    y = (np.clip(xf, lo, hi) - lo) * (levels / (hi - lo))
    floor = np.floor(y)
    y = floor + (np.random.default_rng(secrets.randbits(64)).random(y.shape) < (y - floor))
    return y.astype(np.uint64), clipped


def dequantize_sum(total: np.ndarray, count: int, *, lo: float, hi: float, qbits: int
                   ) -> np.ndarray:
    """The real-valued sum of ``count`` quantised vectors from their integer sum."""
    levels = (1 << qbits) - 1
    return total.astype(np.float64) * ((hi - lo) / levels) + count * lo


@dataclass(frozen=True)
class Segment:
    """A named run of values in a secure sum: reals on [lo, hi] (quantised), or exact
    non-negative integer counts (``exact``)."""

    name: str
    size: int
    lo: float = 0.0
    hi: float = 1.0
    exact: bool = False


@dataclass(frozen=True)
class Layout:
    """What a secure sum's vector holds, known to node and server from the run's settings."""

    segments: tuple[Segment, ...]

    @property
    def length(self) -> int:
        return sum(s.size for s in self.segments)

    def encode(self, values: Mapping[str, ArrayLike], *, qbits: int) -> tuple[np.ndarray, int]:
        """One vector of integers in [0, 2**qbits); and how many reals were clipped."""
        if set(values) != {s.name for s in self.segments}:
            raise FederationError(f"secure sum: values for {sorted(values)}, the layout has "
                                  f"{[s.name for s in self.segments]}")
        top = (1 << qbits) - 1
        parts, clipped = [], 0
        for seg in self.segments:
            v = np.asarray(values[seg.name]).reshape(-1)
            if v.size != seg.size:
                raise FederationError(f"secure sum: {seg.name} has {v.size} values, the layout "
                                      f"{seg.size}")
            if seg.exact:
                ints = np.asarray(v, dtype=np.int64)
                if np.any(ints < 0) or np.any(ints > top) or np.any(ints != v):
                    raise FederationError(
                        f"secure sum: {seg.name} must hold whole numbers in [0, {top}]; raise "
                        "secagg.quantization_bits for larger counts")
                parts.append(ints.astype(np.uint64))
            else:
                q, c = quantize(v, lo=seg.lo, hi=seg.hi, qbits=qbits)
                parts.append(q)
                clipped += c
        return np.concatenate(parts), clipped

    def decode(self, total: np.ndarray, summands: int, *, qbits: int) -> dict[str, np.ndarray]:
        """The real sums (and exact counts) from the unmasked integer sum of ``summands``."""
        out, pos = {}, 0
        for seg in self.segments:
            part = total[pos:pos + seg.size]
            pos += seg.size
            out[seg.name] = (part.astype(np.float64) if seg.exact else dequantize_sum(
                part, summands, lo=seg.lo, hi=seg.hi, qbits=qbits))
        return out


#: Loss values beyond this are clipped inside the secure sum (a mean log-loss this high
#: means the model is broken; the node still keeps its exact figure locally).
LOSS_RANGE = 64.0


def train_layout(model_size: int, clip: float) -> Layout:
    """A training round's sum: the weighted update, the weighted loss, the weight (count)
    and the rows set aside. Weight w = min(n, max_weight) / max_weight, so that w * update
    stays within the clip range and the server divides by the summed count."""
    return Layout((Segment("update", model_size, -clip, clip),
                   Segment("loss", 1, 0.0, LOSS_RANGE),
                   Segment("examples", 1, exact=True),
                   Segment("rows_set_aside", 1, exact=True)))


def eval_layout() -> Layout:
    """An evaluation's sum: per-bin positive and negative counts over the score grid, the
    weighted log-loss and Brier score, and the example count."""
    return Layout((Segment("positives", SCORE_BINS, exact=True),
                   Segment("negatives", SCORE_BINS, exact=True),
                   Segment("loss", 1, 0.0, LOSS_RANGE),
                   Segment("brier", 1, 0.0, 1.0),
                   Segment("examples", 1, exact=True)))


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


# --- Shamir secret sharing over GF(2**130 - 5) ---------------------------------------------

def split(secret: bytes, *, threshold: int, xs: Sequence[int]) -> dict[int, int]:
    """Shares of a <= 16-byte secret at the points ``xs`` (non-zero, distinct)."""
    s = int.from_bytes(secret, "big")
    if len(secret) > SEED_BYTES or s >= PRIME:
        raise ValueError("secret too large for the field")
    coeffs = [s] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out = {}
    for x in xs:
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % PRIME
        out[x] = acc
    return out


def combine(shares: dict[int, int], *, threshold: int, length: int = SEED_BYTES) -> bytes:
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
    if secret >= 1 << (8 * length):
        raise FederationError("the shares do not rebuild a secret (inconsistent shares)")
    return secret.to_bytes(length, "big")


def encode_shares(values: Sequence[int]) -> bytes:
    return b"".join(v.to_bytes(SHARE_BYTES, "big") for v in values)


def decode_shares(data: bytes, count: int) -> list[int]:
    if len(data) != count * SHARE_BYTES:
        raise FederationError(f"a share bundle has {len(data)} bytes; {count} shares need "
                              f"{count * SHARE_BYTES}")
    return [int.from_bytes(data[i * SHARE_BYTES:(i + 1) * SHARE_BYTES], "big")
            for i in range(count)]


# --- encrypted share bundles ----------------------------------------------------------------

def seal(key: bytes, sender: int, receiver: int, session: bytes, payload: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    aad = session + struct.pack(">QQ", sender, receiver)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, payload, aad)


def open_sealed(key: bytes, sender: int, receiver: int, session: bytes, box: bytes) -> bytes:
    aad = session + struct.pack(">QQ", sender, receiver)
    try:
        return ChaCha20Poly1305(key).decrypt(box[:12], box[12:], aad)
    except Exception:  # cryptography raises InvalidTag; anything else is as bad
        raise FederationError(f"a share from node {sender} failed authentication; the "
                              "round cannot use it") from None


# --- the graph and its thresholds --------------------------------------------------------------

def pack_ids(nodes: Sequence[int]) -> bytes:
    """Node ids (Flower's unsigned 64-bit ids) sorted, 8 bytes each, big-endian: the
    session's whole membership in 8 bytes per node, so that each node derives the neighbour
    graph itself while receiving signed keys only for its own neighbourhood."""
    ordered = sorted(set(nodes))
    if any(not 0 <= n < 2**64 for n in ordered):
        raise ValueError("node ids must be unsigned 64-bit integers")
    return struct.pack(f">{len(ordered)}Q", *ordered)


def unpack_ids(blob: bytes) -> list[int]:
    """The ids of :func:`pack_ids`, strictly: whole 8-byte entries, strictly increasing (so
    none repeats)."""
    if not isinstance(blob, bytes) or len(blob) % 8:
        raise FederationError("the session's node ids must be whole 8-byte entries")
    ids = list(struct.unpack(f">{len(blob) // 8}Q", blob))
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise FederationError("the session's node ids must be sorted, each once")
    return ids


def pack_members(session: Sequence[int], members: Sequence[int]) -> bytes:
    """Which of the session's nodes (sorted, as :func:`pack_ids` holds them) are in
    ``members``: one bit per session node, most significant bit first, so a survivor set
    of n nodes travels in ceil(n / 8) bytes."""
    order = sorted(session)
    wanted = set(members)
    if not wanted <= set(order):
        raise ValueError("members must be nodes of the session")
    bits = np.zeros(-(-len(order) // 8) * 8, dtype=np.uint8)
    bits[[i for i, n in enumerate(order) if n in wanted]] = 1
    return np.packbits(bits).tobytes()


def unpack_members(session: Sequence[int], blob: bytes) -> list[int]:
    """The members of :func:`pack_members`, strictly: exactly ceil(n / 8) bytes, padding
    bits zero."""
    order = sorted(session)
    if not isinstance(blob, bytes) or len(blob) != -(-len(order) // 8):
        raise FederationError(f"a set of the session's nodes must be {-(-len(order) // 8)} "
                              f"bytes, one bit per node of the session's {len(order)}")
    bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8))
    if bits[len(order):].any():
        raise FederationError("a set of the session's nodes names nodes beyond the session")
    return [n for n, bit in zip(order, bits[:len(order)], strict=True) if bit]


def neighbours(nodes: Sequence[int], degree: int) -> dict[int, list[int]]:
    """SecAgg+'s sparse graph: each node's ``degree`` nearest others on a ring ordered by
    a hash of the node ids (so the server cannot pick who neighbours whom by id choice
    alone). ``degree`` 0 means automatic: everyone up to 10 nodes, else
    ``2 * ceil(log2 n) + 2`` (16 for 100 nodes), SecAgg+'s logarithmic degree. Every node
    derives the same graph from the same ids, so a server cannot hand out its own."""
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


def share_threshold(group: int, fraction: float) -> int:
    """Shares needed to rebuild a node's secret, for a neighbourhood of ``group`` nodes
    (itself included): more than ``fraction`` of it, at least 2. With fraction >= 0.5 that is
    a strict majority, so no server can collect both kinds of shares of one node from
    honest holders (each reveals one kind): 2t > group."""
    exact = Fraction(repr(float(fraction)))  # 0.57 * 100 is 57 here, not 56.999...
    return min(group, max(2, math.floor(exact * group) + 1))


def min_sharers(group: int, threshold: int) -> int:
    """Neighbours (itself not counted) that must have delivered shares before a node masks
    its input: g - t + 1, so that at most t - 1 members of its neighbourhood are left that
    the node did not mask with, too few to sign a survivor set that declares all of its
    mask partners dropped."""
    return group - threshold + 1
