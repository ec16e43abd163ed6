"""The node's side of SecAgg+ against a malicious aggregator (federation/secagg.py has the
protocol, the maths and why each rule is there).

A session is one server round; it holds one secure sum per purpose (``train``, then
``evaluate``) with independent secrets. The node takes nothing from the server on trust:

- peers: the server sends the session's node ids and the signed keys of this node's
  neighbourhood (O(neighbours) keys, not everyone's). Every relayed public key must carry a
  valid signature, bound to this session, by a node key on the roster this agency
  approved; each agency appears once; the node finds its own keys unchanged and the keys of
  every neighbour present. A substituted key, a Sybil or a replayed key is refused.
- parameters: the node derives the neighbour graph from the session's ids (a server cannot
  hand out its own graph for them), its share threshold and the modulus from them and its
  own run config, and refuses a threshold below its policy (``[secure_aggregation]
  min_threshold``, never below a strict majority) or fewer agencies than ``min_agencies``:
  in its verified neighbourhood at the share stage, in the survivor set at the consistency
  stage, and among the verified signatures over that set before it unmasks.
- weights: there are none to take; the node's vector carries its own count-weighted update
  and its count, the server divides the sums.
- replays: a session is bound to the run id (the node's own), the round and a server nonce;
  a node runs each sum at most once per round and only for a later round than the last.
- unmasking: after the consistency round, and only with ``t`` valid signatures from its
  neighbourhood over exactly the survivor set it signed; one kind of share per neighbour,
  once per sum.

Any refusal is a FederationError whose message names the rule and the numbers (never data):
the node then drops out of the round, which the server may only abort.

The stage methods work on plain dicts so that tests (and the malicious-aggregator harness in
tests/test_secagg_malicious.py) run the protocol in one process; clients/secagg_stages.py wraps
them as Flower handlers and keeps the state in ``context.state`` between messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from federation import secagg as sa
from federation.errors import FederationError, ProtocolError, SignatureError
from federation.protocol import SECAGG_REQUEST, SecAggKey, ShareKind, Stage
from federation.roster import Roster
from federation.signing import PrivateKey, sign, verify


@dataclass(frozen=True)
class Identity:
    """Who this node is in a session, and whom it accepts as peers."""

    node_id: int
    agency: str
    run_id: str
    key: PrivateKey  # the enrolled node key (signs keys and survivor sets)
    roster: Roster  # the roster this agency approved


@dataclass(frozen=True)
class Safety:
    """Parameters from the run config (server-chosen) and the floors the agency set."""

    fraction: float  # secagg.threshold
    degree: int  # secagg.num_neighbours
    quantization_bits: int  # secagg.quantization_bits
    min_threshold: float  # policy [secure_aggregation] min_threshold
    min_agencies: int  # policy [secure_aggregation] min_agencies


def _refuse(text: str) -> FederationError:
    return FederationError(f"secure aggregation refused by this node: {text}")


def _exact_keys(cfg: dict[str, Any], stage: Stage, name: str) -> None:
    """A stage's request holds exactly its keys (federation/protocol.py SECAGG_REQUEST): an
    extra one is a server adding parameters, a missing one a ProtocolError naming it; both
    are refusals (FederationError), and every later ``cfg[key]`` of the stage is safe."""
    expected = {str(k) for k in SECAGG_REQUEST[stage]}
    if set(cfg) == expected:
        return
    extra, missing = sorted(set(cfg) - expected), sorted(expected - set(cfg))
    text = (f"the {name} message must hold exactly {sorted(expected)} (unexpected: {extra}, "
            f"missing: {missing}); a server cannot add parameters such as weights or "
            "thresholds, which the node derives itself")
    if missing:
        raise ProtocolError(f"secure aggregation refused by this node: {text}")
    raise _refuse(text)


def _ints(values: object, what: str) -> list[int]:
    if not isinstance(values, list):
        raise _refuse(f"{what} is not a list")
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise _refuse(f"{what} holds a value that is not a node id") from None


def _bytes_list(values: object, what: str) -> list[bytes]:
    if not isinstance(values, list) or not all(isinstance(v, bytes) for v in values):
        raise _refuse(f"{what} must be a list of byte strings")
    return [bytes(v) for v in values]


def _b(text: str) -> bytes:
    return bytes.fromhex(text)


class NodeSecAgg:
    """One node's state across the stages of a session (and the rounds it already ran)."""

    def __init__(self, identity: Identity, safety: Safety,
                 state: dict[str, Any] | None = None) -> None:
        self.me = identity
        self.safety = safety
        self.state: dict[str, Any] = state if state is not None else {"last_round": {}}

    # --- helpers --------------------------------------------------------------------------
    @property
    def session(self) -> bytes:
        if "session" not in self.state:
            raise _refuse("a secure-aggregation stage arrived before set-up")
        return _b(self.state["session"])

    def _sum_state(self, sum_name: str) -> dict[str, Any]:
        sums = self.state.get("sums", {})
        if sum_name not in sums:
            raise _refuse(f"no secure sum {sum_name!r} was set up in this session")
        return dict(sums[sum_name])

    def _put_sum(self, sum_name: str, values: dict[str, Any]) -> None:
        self.state["sums"][sum_name] = values

    def _group(self) -> list[int]:
        return [*self.state["neighbours"], self.me.node_id]

    @property
    def threshold(self) -> int:
        return int(self.state["threshold"])

    @property
    def bits(self) -> int:
        return sa.modulus_bits(self.safety.quantization_bits, len(self.state["ids"]))

    # --- stage 1: set-up ---------------------------------------------------------------------
    def setup(self, cfg: dict[str, Any], *, server_round: int) -> dict[str, Any]:
        _exact_keys(cfg, Stage.SETUP, "set-up")
        nonce = cfg[SecAggKey.NONCE]
        if not isinstance(nonce, bytes) or len(nonce) < 16:
            raise _refuse("the session nonce must be at least 16 bytes")
        names = cfg[SecAggKey.SUMS]
        if (not isinstance(names, list) or not names or len(set(names)) != len(names)
                or not set(names) <= set(sa.SUMS)):
            raise _refuse(f"sums must be distinct names from {list(sa.SUMS)}")
        last: dict[str, int] = dict(self.state.get("last_round", {}))
        for name in names:
            if name in last and server_round <= last[name]:
                raise _refuse(f"a {name} sum for round {server_round} after one for round "
                              f"{last[name]}: a replayed or repeated round")
            last[name] = server_round
        session = sa.session_id(self.me.run_id, server_round, bytes(nonce))
        c_sk, c_pk = sa.new_keypair()
        sums: dict[str, dict[str, Any]] = {}
        s_pks: dict[str, bytes] = {}
        for name in names:
            s_seed, b_seed = sa.new_seed(), sa.new_seed()
            s_pks[name] = sa.seed_keypair(s_seed)[1]
            sums[name] = {"s": s_seed.hex(), "b": b_seed.hex(), "pk": s_pks[name].hex()}
        signature = sign(self.me.key, sa.keys_message(session, self.me.node_id, self.me.agency,
                                                      c_pk, s_pks))
        self.state = {"last_round": last, "session": session.hex(), "round": server_round,
                      "order": list(names), "c_sk": c_sk.hex(), "c_pk": c_pk.hex(),
                      "sums": sums}
        return {SecAggKey.AGENCY: self.me.agency, SecAggKey.C_PK: c_pk,
                SecAggKey.S_PKS: [s_pks[n] for n in names], SecAggKey.SIGNATURE: signature}

    # --- stage 2: shares ------------------------------------------------------------------------
    def _verified_peers(self, cfg: dict[str, Any], session: list[int]
                        ) -> dict[int, dict[str, Any]]:
        ids = _ints(cfg[SecAggKey.IDS], SecAggKey.IDS)
        agencies = cfg[SecAggKey.AGENCIES]
        c_pks = _bytes_list(cfg[SecAggKey.C_PKS], SecAggKey.C_PKS)
        s_pks = _bytes_list(cfg[SecAggKey.S_PKS], SecAggKey.S_PKS)
        sigs = _bytes_list(cfg[SecAggKey.SIGNATURES], SecAggKey.SIGNATURES)
        order: list[str] = self.state["order"]
        if not (isinstance(agencies, list) and len(ids) == len(agencies) == len(c_pks)
                == len(sigs) and len(s_pks) == len(ids) * len(order)):
            raise _refuse("the relayed keys are not one entry per node")
        if len(set(ids)) != len(ids) or len(set(agencies)) != len(agencies):
            raise _refuse("a node id or an agency appears twice among the relayed keys")
        if not set(ids) <= set(session):
            raise _refuse("the relayed keys name nodes outside the session's node ids")
        peers: dict[int, dict[str, Any]] = {}
        for i, node in enumerate(ids):
            agency = str(agencies[i])
            key = self.me.roster.key_of(agency)
            if key is None:
                raise _refuse(f"node {node} claims to be {agency!r}, which is not on the roster "
                              f"this agency approved (version {self.me.roster.version}); a "
                              "Sybil or an unapproved member")
            mine = {n: s_pks[i * len(order) + k] for k, n in enumerate(order)}
            try:
                verify(key, sigs[i], sa.keys_message(self.session, node, agency, c_pks[i], mine),
                       what=f"the secure-aggregation keys of {agency}")
            except SignatureError:
                raise _refuse(f"the keys relayed for {agency} (node {node}) are not signed by "
                              "its rostered node key for this session: substituted or "
                              "replayed keys") from None
            peers[node] = {"agency": agency, "c_pk": c_pks[i], "s_pks": mine}
        own = peers.get(self.me.node_id)
        if (own is None or own["agency"] != self.me.agency
                or own["c_pk"] != _b(self.state["c_pk"])
                or any(own["s_pks"][n] != _b(self.state["sums"][n]["pk"]) for n in order)):
            raise _refuse("this node's own keys are missing or changed in the relayed list")
        return peers

    def share(self, cfg: dict[str, Any]) -> dict[str, Any]:
        _exact_keys(cfg, Stage.SHARE, "share")
        if "ids" in self.state:
            raise _refuse("a second share request in one session")
        try:
            session = sa.unpack_ids(cfg[SecAggKey.SESSION])
        except FederationError as exc:
            raise _refuse(str(exc)) from None
        peers = self._verified_peers(cfg, session)
        ids = session
        s = self.safety
        graph = sa.neighbours(ids, s.degree)
        nbrs = graph[self.me.node_id]
        absent = [n for n in nbrs if n not in peers]
        if absent:
            raise _refuse(f"the signed keys of {len(absent)} of this node's {len(nbrs)} "
                          "neighbours were not relayed; it shares only with neighbours whose "
                          "keys it verified")
        if len(nbrs) + 1 < s.min_agencies:
            raise _refuse(f"{len(nbrs) + 1} agencies in this node's neighbourhood of the "
                          f"session, fewer than the {s.min_agencies} this agency's policy "
                          "requires in any secure sum ([secure_aggregation] min_agencies)")
        g = len(nbrs) + 1
        t = sa.share_threshold(g, s.fraction)
        floor = sa.share_threshold(g, s.min_threshold)
        if t < floor:
            raise _refuse(f"share threshold {t} of a neighbourhood of {g} (secagg.threshold="
                          f"{s.fraction:g}) is below this agency's floor of {floor} "
                          f"([secure_aggregation] min_threshold={s.min_threshold:g}: more than "
                          "that share of the neighbourhood must be needed to unmask)")
        xs = {n: i + 1 for i, n in enumerate(ids)}
        group = [*nbrs, self.me.node_id]
        order: list[str] = self.state["order"]
        shares: dict[int, list[int]] = {n: [] for n in group}
        for name in order:
            for secret in ("s", "b"):
                split = sa.split(_b(self.state["sums"][name][secret]), threshold=t,
                                 xs=[xs[n] for n in group])
                for n in group:
                    shares[n].append(split[xs[n]])
        c_sk = _b(self.state["c_sk"])
        to, boxes = [], []
        for n in nbrs:
            key = sa.agree(c_sk, peers[n]["c_pk"], info=sa.SHARE_INFO,
                           context=sa.pair_context(self.session, "share", self.me.node_id, n))
            boxes.append(sa.seal(key, self.me.node_id, n, self.session,
                                 sa.encode_shares(shares[n])))
            to.append(str(n))
        self.state.update(
            ids=ids, neighbours=nbrs, threshold=t, xs={str(n): x for n, x in xs.items()},
            agencies={str(n): peers[n]["agency"] for n in group},
            c_pks={str(n): peers[n]["c_pk"].hex() for n in nbrs},
            s_pks={str(n): {k: v.hex() for k, v in peers[n]["s_pks"].items()} for n in nbrs},
            held={str(self.me.node_id): shares[self.me.node_id]})
        return {SecAggKey.TO: to, SecAggKey.BOXES: boxes}

    # --- stage 3: masked input -------------------------------------------------------------------
    def receive_shares(self, cfg: dict[str, Any]) -> None:
        """Open the share bundles the server delivers (once per session)."""
        _exact_keys(cfg, Stage.MASKED, "masked-input")
        st = self.state
        if "ids" not in st:
            raise _refuse("shares delivered before this node shared its own")
        if st.get("received"):
            raise _refuse("share bundles delivered twice in one session")
        senders = _ints(cfg[SecAggKey.FROM], SecAggKey.FROM)
        boxes = _bytes_list(cfg[SecAggKey.BOXES], SecAggKey.BOXES)
        if len(senders) != len(boxes) or len(set(senders)) != len(senders):
            raise _refuse("share bundles must come one per neighbour")
        c_sk = _b(st["c_sk"])
        count = 2 * len(st["order"])
        for sender, box in zip(senders, boxes, strict=True):
            if sender not in st["neighbours"]:
                raise _refuse(f"a share bundle from node {sender}, which is not a neighbour")
            key = sa.agree(c_sk, _b(st["c_pks"][str(sender)]), info=sa.SHARE_INFO,
                           context=sa.pair_context(self.session, "share", sender,
                                                   self.me.node_id))
            st["held"][str(sender)] = sa.decode_shares(
                sa.open_sealed(key, sender, self.me.node_id, self.session, box), count)
        st["received"] = True
        partners = len(st["held"]) - 1
        need = sa.min_sharers(len(st["neighbours"]) + 1, self.threshold)
        if partners < need:
            raise _refuse(f"shares arrived from {partners} neighbour(s); this node masks its "
                          f"input only with at least {need} (neighbourhood "
                          f"{len(st['neighbours']) + 1}, threshold {self.threshold})")

    def mask(self, sum_name: str, vector: np.ndarray) -> bytes:
        """The packed masked vector of ``vector`` (integers in [0, 2**qbits)), for one sum."""
        st = self.state
        if not st.get("received"):
            raise _refuse("masking before the share bundles arrived")
        mine = self._sum_state(sum_name)
        if mine.get("masked"):
            raise _refuse(f"the {sum_name} input was already masked in this session")
        bits = self.bits
        modulus = np.uint64((1 << bits) - 1)
        v = np.asarray(vector, dtype=np.uint64)
        context = self.session + sum_name.encode()
        y = (v + sa.mask_stream(sa.self_mask_key(_b(mine["b"]), context),
                                v.size, bits)) & modulus
        s_sk, _ = sa.seed_keypair(_b(mine["s"]))
        for key_n in st["held"]:
            n = int(key_n)
            if n == self.me.node_id:
                continue
            key = sa.agree(s_sk, _b(st["s_pks"][key_n][sum_name]), info=sa.MASK_INFO,
                           context=sa.pair_context(self.session, sum_name, self.me.node_id, n))
            m = sa.mask_stream(key, v.size, bits)
            y = (y + m) & modulus if self.me.node_id < n else (y - m) & modulus
        mine.update(masked=True, length=int(v.size))
        self._put_sum(sum_name, mine)
        return sa.pack(y, bits)

    # --- stage 4: consistency -------------------------------------------------------------------
    def consistency(self, sum_name: str, cfg: dict[str, Any]) -> dict[str, Any]:
        _exact_keys(cfg, Stage.CONSISTENCY, "consistency")
        mine = self._sum_state(sum_name)
        if not mine.get("masked"):
            raise _refuse(f"asked to confirm survivors of a {sum_name} sum this node did not "
                          "submit to")
        if "survivors" in mine:
            raise _refuse(f"the {sum_name} survivors were already confirmed once")
        try:
            survivors = sa.unpack_members(self.state["ids"], cfg[SecAggKey.SURVIVORS])
        except FederationError as exc:
            raise _refuse(str(exc)) from None
        if self.me.node_id not in survivors:
            raise _refuse("the survivor set leaves this node out")
        if len(survivors) < self.safety.min_agencies:
            raise _refuse(f"the {sum_name} sum would hold {len(survivors)} agencies, fewer than "
                          f"the {self.safety.min_agencies} this agency's policy requires "
                          "([secure_aggregation] min_agencies)")
        in_group = len(set(survivors) & set(self._group()))
        if in_group < self.threshold:
            raise _refuse(f"only {in_group} survivors in this node's neighbourhood, fewer than "
                          f"its threshold {self.threshold}")
        mine["survivors"] = survivors
        self._put_sum(sum_name, mine)
        return {SecAggKey.SIGNATURE: sign(self.me.key,
                                  sa.survivors_message(self.session, sum_name, survivors))}

    # --- stage 5: unmask ------------------------------------------------------------------------
    def unmask(self, sum_name: str, cfg: dict[str, Any]) -> dict[str, Any]:
        _exact_keys(cfg, Stage.UNMASK, "unmask")
        mine = self._sum_state(sum_name)
        if "survivors" not in mine:
            raise _refuse("asked to unmask before confirming the survivor set")
        if mine.get("revealed"):
            raise _refuse(f"shares of this {sum_name} sum were already revealed once; "
                          "refusing a second request")
        survivors: list[int] = mine["survivors"]
        signers = _ints(cfg[SecAggKey.SIGNERS], SecAggKey.SIGNERS)
        sigs = _bytes_list(cfg[SecAggKey.SIGNATURES], SecAggKey.SIGNATURES)
        if len(signers) != len(sigs) or len(set(signers)) != len(signers):
            raise _refuse("the consistency signatures must come one per signer")
        allowed = set(survivors) & set(self._group())
        message = sa.survivors_message(self.session, sum_name, survivors)
        for node, sig in zip(signers, sigs, strict=True):
            agency = self.state["agencies"].get(str(node))
            if node not in allowed or agency is None:
                raise _refuse(f"a consistency signature from node {node}, which is not a "
                              "survivor of this node's neighbourhood")
            key = self.me.roster.key_of(agency)
            if key is None:
                raise _refuse(f"{agency} is no longer on the approved roster")
            try:
                verify(key, sig, message, what=f"the survivor set signed by {agency}")
            except SignatureError:
                raise _refuse(f"the consistency signature of {agency} (node {node}) does not "
                              "verify over the survivor set this node signed: a forged "
                              "signature, or a server that told nodes different survivors"
                              ) from None
        if len(signers) < self.threshold:
            raise _refuse(f"{len(signers)} valid consistency signature(s) over the survivor "
                          f"set; {self.threshold} needed before revealing any share")
        if len(signers) < self.safety.min_agencies:
            raise _refuse(f"{len(signers)} agencies of this node's neighbourhood confirmed the "
                          f"survivor set, fewer than the {self.safety.min_agencies} this "
                          "agency's policy requires in any secure sum ([secure_aggregation] "
                          "min_agencies)")
        mine["revealed"] = True
        self._put_sum(sum_name, mine)
        k = self.state["order"].index(sum_name)
        ids, kinds, shares = [], [], []
        for owner, held in self.state["held"].items():
            if int(owner) in survivors:
                kinds.append(ShareKind.SELF_MASK.value)
                shares.append(int(held[2 * k + 1]).to_bytes(sa.SHARE_BYTES, "big"))
            else:
                kinds.append(ShareKind.MASK_KEY.value)
                shares.append(int(held[2 * k]).to_bytes(sa.SHARE_BYTES, "big"))
            ids.append(owner)
        return {SecAggKey.IDS: ids, SecAggKey.KINDS: kinds, SecAggKey.SHARES: shares,
                SecAggKey.X: int(self.state["xs"][str(self.me.node_id)])}

    # --- persistence ---------------------------------------------------------------------------
    def dump(self) -> str:
        """The node's state as JSON text (kept in ``context.state`` at the node)."""
        return json.dumps(self.state, sort_keys=True)

    @classmethod
    def load(cls, identity: Identity, safety: Safety, text: str | None) -> NodeSecAgg:
        return cls(identity, safety, json.loads(text) if text else None)

