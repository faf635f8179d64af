"""Entries written once, atomically, by one process of many: the protocol of the fp32 network cache.

An ``EntryCache`` is a directory (a shared file system is fine) of entries,
each a directory named by its key. Many processes (the jobs of a sweep,
under joblib, submitit or Slurm) may ask for one key at once; one of them
computes the entry, the others wait for it and read it:

* a complete entry is ``<key>/`` with its ``entry.json`` (marked
  ``complete``, naming its key). It is written into ``<key>.tmp-*`` and
  renamed into place when complete, so no reader ever sees half of one; a
  ``<key>.tmp-*`` left by a process that died writing is ignored, and
  removed by the next writer;
* the process that computes it holds ``<key>.lock`` (``fcntl.flock``
  through ``filelock``; the file stays) and says who it is in
  ``<key>.owner.json``; the others block on the lock, saying for whom, and
  look for the entry between tries. A process that dies releases its lock
  with it, and the next waiter computes the entry. On a file system
  without ``flock`` processes do not wait for each other (each may compute
  it), but entries stay atomic.

This module imports nothing of snnexp's training (``snnexp.train.fp32_cache``
is its user), so a process that only coordinates starts fast.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

log = logging.getLogger(__name__)

FORMAT = 1  # of entry.json
ENTRY = "entry.json"
# What flock fails with on a file system that cannot lock (NFS without a lock manager, some FUSE mounts).
NO_FLOCK = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP})


@dataclass(frozen=True)
class Entry:
    """A complete entry: its key, its directory and its ``entry.json``."""

    key: str
    path: Path
    meta: dict[str, Any]


class Uncoordinated(Exception):
    """The cache's file system has no ``flock``: jobs cannot wait for each other."""


class EntryCache:
    """Entries under one directory, each written once, atomically, by the holder of its lock.

    Files, per key: ``<key>/`` (a complete entry: renamed into place with its
    ``entry.json``), ``<key>.lock`` (the ``flock`` lock file; it stays),
    ``<key>.owner.json`` (who holds or last held the lock), ``<key>.tmp-*``
    (an entry being written, or left by a job that died writing it).
    """

    def __init__(self, root: Path, *, name: str = "cache", poll_s: float = 1.0):
        """Opens the cache at ``root`` (created when first written).

        Args:
            root: the cache directory (a shared file system is fine).
            name: what the log lines call it (``fp32 cache``).
            poll_s: seconds between two looks while waiting for another job.
        """
        self.root = Path(root).absolute()
        self.name = name
        self.poll_s = poll_s

    def entry_path(self, key: str) -> Path:
        """Where the entry of ``key`` lives when complete."""
        return self.root / key

    def lookup(self, key: str) -> Entry | None:
        """The complete entry of ``key``, or None (missing, or not a complete entry of this key)."""
        path = self.entry_path(key)
        try:
            meta = json.loads((path / ENTRY).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("key") != key or meta.get("complete") is not True:
            return None
        return Entry(key, path, meta)

    def get_or_create(
        self,
        key: str,
        keyed: dict[str, Any],
        create: Callable[[Path], dict[str, Any]],
        *,
        owner: dict[str, Any] | None = None,
        stop_check: Callable[[str], None] | None = None,
    ) -> tuple[Entry, bool]:
        """The entry of ``key``: found, or made by ``create`` while holding the key's lock.

        Args:
            key: the entry's key (``key_of(keyed)``).
            keyed: what the key hashes, stored readable in ``entry.json``.
            create: writes the entry's files into the directory it is given
                and returns what ``entry.json`` should add; runs only in the
                job that holds the lock and found no entry.
            owner: who this job is (``run_dir``, ...), shown to jobs that wait.
            stop_check: called between waits with what the job is doing; raises to stop waiting.

        Returns:
            ``(entry, created)``: ``created`` is true when ``create`` made it here.
        """
        found = self.lookup(key)
        if found is not None:
            return found, False
        self.root.mkdir(parents=True, exist_ok=True)
        owner = {**(owner or {}), "host": socket.gethostname(), "pid": os.getpid()}
        try:
            with self._locked(key, stop_check) as found:
                if found is not None:
                    return found, False
                found = self.lookup(key)  # written while we waited (or before the lock was ours)
                if found is not None:
                    return found, False
                self._clear_leftovers(key)
                self._write_owner(key, owner)
                return self._create(key, keyed, create, owner), True
        except Uncoordinated as e:
            log.warning("%s %s: %s; this job computes the entry without waiting for others (entries stay atomic)",
                        self.name, self.root, e)
            return self._create(key, keyed, create, owner), True

    @contextlib.contextmanager
    def _locked(self, key: str, stop_check: Callable[[str], None] | None) -> Iterator[Entry | None]:
        """Holds the lock of ``key``; yields an entry that became complete while waiting (then unlocked)."""
        kwargs = {"fallback_to_soft": False} if "fallback_to_soft" in inspect.signature(filelock.FileLock).parameters \
            else {}
        lock = filelock.FileLock(self.root / f"{key}.lock", **kwargs)
        waited, t0 = False, time.monotonic()
        while True:
            try:
                lock.acquire(timeout=self.poll_s)
                break
            except filelock.Timeout:
                pass
            except NotImplementedError as e:  # filelock 3 on a file system without flock
                raise Uncoordinated(f"no working flock ({e})") from None
            except OSError as e:
                if e.errno not in NO_FLOCK:
                    raise
                raise Uncoordinated(f"no working flock ({e})") from None
            found = self.lookup(key)
            if found is not None:  # its writer renamed it and has not let go of the lock yet
                yield found
                return
            if not waited:
                log.info("%s: waiting for key %s, which %s is computing", self.name, key, self._describe_owner(key))
                waited = True
            if stop_check is not None:
                stop_check(f"while waiting for {self.name} key {key}")
        if waited:
            log.info("%s: waited %.1f s for key %s", self.name, time.monotonic() - t0, key)
        try:
            yield None
        finally:
            lock.release()

    def _describe_owner(self, key: str) -> str:
        try:
            o = json.loads((self.root / f"{key}.owner.json").read_text())
        except (OSError, ValueError):
            return "another job"
        since = time.strftime("%H:%M:%S", time.localtime(o.get("since", 0)))
        return f"{o.get('run_dir', 'a job')} (pid {o.get('pid')} on {o.get('host')}, since {since})"

    def _write_owner(self, key: str, owner: dict[str, Any]) -> None:
        path = self.root / f"{key}.owner.json"
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps({**owner, "since": time.time()}) + "\n")
        os.replace(tmp, path)

    def _clear_leftovers(self, key: str) -> None:
        """Removes what dead writers of ``key`` left (only the lock holder writes them) and a broken entry."""
        for tmp in self.root.glob(f"{key}.tmp-*"):
            log.info("%s: removing %s, left by a job that died writing it", self.name, tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        broken = self.entry_path(key)
        if broken.exists():  # a directory without a valid entry.json: copied in part, or by hand
            log.warning("%s: %s is not a complete entry of key %s; replacing it", self.name, broken, key)
            aside = broken.with_name(f"{key}.tmp-broken-{uuid.uuid4().hex}")
            os.replace(broken, aside)
            shutil.rmtree(aside, ignore_errors=True)

    def _create(self, key: str, keyed: dict[str, Any], create: Callable[[Path], dict[str, Any]],
                owner: dict[str, Any]) -> Entry:
        """Runs ``create`` into a temporary directory, writes ``entry.json`` last, renames it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{key}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            payload = create(tmp)
            meta = {**payload, "format": FORMAT, "key": key, "config": keyed, "created": time.time(),
                    "created_by": owner, "complete": True}
            with (tmp / ENTRY).open("w") as f:
                f.write(json.dumps(meta, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            final = self.entry_path(key)
            try:
                os.replace(tmp, final)
            except OSError:  # uncoordinated: another job put its entry there first
                found = self.lookup(key)
                if found is None:
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                return found
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a kill (SIGKILL) leaves it: then the next writer removes it
            raise
        return Entry(key, final, meta)


def _fsync_dir(path: Path) -> None:
    """Makes a rename in ``path`` durable where the file system allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
