"""Files written whole or not at all, and private from birth.

Everything a node keeps (its key, ledger, receipts, approvals, consultations, its own
figures, feature caches) is the agency's alone: folders are created 0700 and files 0600,
whatever the process's umask, and never chmod'ed afterwards (a file that was briefly
world-readable may already have been read). ``os.open`` and ``os.mkdir`` take a mode
that the umask can only narrow, so each creation is followed by an ``fchmod``/``chmod`` of
the new object to exactly that mode; an object that already existed is left as it is
(its owner chose its mode; ``heroes agency status`` warns when it is looser).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Generic, TypeVar

#: Inode, size, modification and change time (ns) of each of some files (stat_signature).
Signature = tuple[tuple[int, int, int, int], ...]
V = TypeVar("V")

#: Mode of every file the node writes, and of every folder it creates.
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def stat_signature(paths: list[Path]) -> Signature | None:
    """Inode, size, modification and change time (ns) of each of ``paths`` (zeros for one
    that does not exist): any write, replacement or rename changes it, and the change time
    cannot be set back. None where a file cannot be examined. What the nodes' in-process
    caches of verified files are keyed by (clients/node.py, clients/approvals.py)."""
    out = []
    for path in paths:
        try:
            st = path.stat()
        except FileNotFoundError:
            out.append((0, 0, 0, 0))
            continue
        except OSError:
            return None
        out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


class StatCache(Generic[V]):
    """What this process derived from files (read, validated, verified), by key, reused only
    while the files' signature (:func:`stat_signature`, or a folder's listing with the
    same fields) is unchanged; at most ``limit`` entries, the oldest dropped first.
    Thread-safe: the simulation's in-process backend runs several nodes' calls at once."""

    def __init__(self, limit: int) -> None:
        self._held: dict[str, tuple[object, V]] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, key: str, signature: object | None) -> V | None:
        if signature is None:
            return None
        with self._lock:
            held = self._held.get(key)
        return held[1] if held is not None and held[0] == signature else None

    def put(self, key: str, signature: object | None, value: V) -> None:
        if signature is None:  # a file that could not be examined: nothing to key it by
            return
        with self._lock:
            if len(self._held) >= self._limit and key not in self._held:
                self._held.pop(next(iter(self._held)))
            self._held[key] = (signature, value)


def private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents, each 0700 exactly; existing folders are
    left as they are. Returns ``path``."""
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIR)
        except FileExistsError:
            continue  # made meanwhile by another process: its mode is its creator's
        os.chmod(folder, PRIVATE_DIR)
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(path))
    return path


def open_private(path: Path, flags: int) -> int:
    """``os.open(path, flags | O_CREAT)``; a file this call creates is 0600 exactly.

    The mode of an existing file is left alone (with ``O_EXCL`` in ``flags`` an existing
    file is an error, as for ``os.open``). Whether this call created the file is
    decided by the kernel (O_EXCL first), not by a check that could race."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        if flags & os.O_EXCL:  # the caller wants a new file or nothing
            raise
        return os.open(path, flags)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_atomic(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write a complete file or nothing: a reader (a node checking its roster, an agency
    collecting a bundle, an officer reading a report) sees the old file or the whole new
    one, never a part. The file is 0600 from birth (mkstemp, then fchmod), missing folders
    0700.

    ``overwrite=False`` never replaces an existing file or link: the new file is linked
    into place, which fails, atomically, when the name is taken (FileExistsError)."""
    path = Path(path)
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, PRIVATE_FILE)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _link_new(tmp: str, path: Path) -> None:
    """Give ``tmp`` the name ``path`` unless that name is taken (even by a dangling link)."""
    try:
        os.link(tmp, path)  # EEXIST, atomically, when the name is taken
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # a file system without hard links: check, then rename (a narrow race, no more)
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "the name is taken", str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def loose_mode(path: Path, *, public: bool = False) -> str | None:
    """Why ``path`` is more open than a node's files should be (0600 for a file, 0700 for
    a folder), with the command that fixes it; None when it is private or absent.
    ``public``: a file others may read (a public key, a certificate) but never change.
    Symbolic links are judged by what they point at."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if not mode & (0o022 if public else 0o077):
        return None
    want = "700" if stat.S_ISDIR(st.st_mode) else "600"
    what = ("others can change it" if public else
            "open to users other than the node's own (a node keeps its "
            f"{'folders' if want == '700' else 'files'} at 0{want})")
    return f"{path} is mode {mode:04o}: {what}. Fix: chmod {want} {path}"


__all__ = ["PRIVATE_DIR", "PRIVATE_FILE", "loose_mode", "open_private", "private_dir",
           "write_atomic"]
