"""``heroes consortium ledger-heads``: the last privacy-ledger head accepted per agency.

    heroes consortium ledger-heads --dir DIR [--json]        show DIR/ledger-heads.json
    heroes consortium ledger-heads --dir DIR --forget NAME   accept a new ledger for NAME

Registered by ``add_commands(sub, handlers)`` in the style of server/consortium.py. An
operator forgets an agency's head only after the agency's data-protection officer has
explained why its ledger no longer extends the one the consortium saw (a restored backup,
a new node): the next head that agency sends is then accepted as a first contact.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, MutableMapping
from pathlib import Path

from server.ledger_heads import HEADS_FILE, HeadBook

Handler = Callable[[argparse.Namespace], int]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 handlers: MutableMapping[str, Handler]) -> None:
    """Register ``ledger-heads`` and its handler."""
    p = sub.add_parser("ledger-heads", help="the last privacy-ledger head accepted from each "
                       "agency; --forget accepts a new ledger for one")
    p.add_argument("--dir", type=Path, required=True,
                   help=f"the consortium folder (holds {HEADS_FILE})")
    p.add_argument("--forget", metavar="NAME", default=None,
                   help="drop NAME's last head, so that its next one is accepted as a first "
                   "contact (after its data-protection officer explained the change)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    handlers["ledger-heads"] = _ledger_heads


def render(entries: dict[str, dict[str, object]], path: Path) -> str:
    """One line per agency: seq, hash and key (shortened), the run and when."""
    if not entries:
        return f"no ledger heads recorded in {path} yet: every agency's next is a first contact"
    width = max(len(name) for name in entries)
    lines = [f"{'agency':<{width}}  {'seq':>6}  {'hash':<16}  {'node key':<23}  "
             f"{'run':<20}  accepted"]
    for name in sorted(entries):
        e = entries[name]
        lines.append(f"{name:<{width}}  {e['seq']!s:>6}  {str(e['hash'])[:16]:<16}  "
                     f"{str(e['key_fingerprint'])[:23]:<23}  {str(e['run'])[-20:]:<20}  "
                     f"{e['accepted_at']}")
    return "\n".join(lines)


def _ledger_heads(args: argparse.Namespace) -> int:
    path = args.dir / HEADS_FILE
    book = HeadBook(path)
    if args.forget is not None:
        if not book.forget(args.forget):
            print(f"heroes consortium ledger-heads: {path} holds no head for "
                  f"{args.forget!r}; nothing forgotten. Fix: check the name "
                  f"(known: {', '.join(sorted(book.entries())) or 'none'})")
            return 2
        book.save()
        print(f"forgot the ledger head of {args.forget}: its next privacy-ledger head is "
              "accepted as a first contact")
        return 0
    if args.json:
        print(json.dumps({"path": str(path), "agencies": book.entries()}, indent=2,
                         sort_keys=True))
    else:
        print(render(book.entries(), path))
    return 0
