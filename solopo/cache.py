"""The package's one disk cache helper and its one atomic writer.

Sampled pairs, reference log-probs and the base model's evaluation are each cached as one JSON file per entry,
``<SOLOPO_CACHE>/<kind>/<key>.json``::

    {"format": 1, "kind": ..., "key": ..., "meta": {...}, "digest": ..., "payload": ...}

``key`` is the digest of everything the payload was computed from (model identity, data content, settings), so a
changed input is a new entry; ``digest`` is the digest of the payload itself, so an entry edited or damaged after it
was written is caught. An entry that fails either check, or the kind's own check of the payload, is reported in one
line and recomputed (``verify="strict"``: the run stops instead). Entries of older solopo versions have other keys
and are simply recomputed.

Many processes may share a cache (torchrun ranks, the jobs of a sweep, users of a shared file system): each writer
writes a temporary file of its own name and renames it over the entry, so a reader sees a whole entry or none, and
``get_or_compute`` holds a lock on ``<key>.lock`` while it computes, so processes asking for one entry at once compute
it once and the others read it. A cache only saves time: a write that fails (full disk, read-only directory) is
reported in one line and the run goes on with the value it computed.

A write under a temporary name (atomic_file, a checkpoint, the embedded model's folder) that fails raises a
``WriteFailed`` naming what was being written, never its temporary name; ``failed_write`` finds one in an error, and
the entry points end the process with its line (status 2). A read of an input file inside such a write (the GGUF the
embedded model is built from) raises a ``ReadFailed`` naming that file instead (``reading``), which its reader reports
(the embedded model's build: as a source it cannot use, solopo.models.gguf_source.SourceUnusable). A temporary name
(``temporary_name``) says which host and process wrote it, so a later writer of the same path can remove what a killed
one left behind (``remove_abandoned``) without touching another's write in progress.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, ClassVar, Iterator, TypeVar

from solopo.preflight import stop

log = logging.getLogger(__name__)

FORMAT = 1  # the entry layout above; an entry of another format is recomputed
VERIFY = ("warn", "strict")  # what a mismatching entry does: a warning and a recompute, or the run stops
FULL = (errno.ENOSPC, errno.EDQUOT)  # a full disk, an exhausted quota
ABANDONED_AFTER_S = 24 * 3600  # no write takes a day: a temporary name untouched this long has no writer left
T = TypeVar("T")


@dataclass
class Lookups:
    """How many cache entries this process has read and how many it computed, over every kind: a stage of a run that
    read entries and computed none took its value from the cache (solopo.training.callbacks.StageCosts)."""

    read: int = 0
    computed: int = 0


LOOKUPS = Lookups()  # this process's, counted by get_or_compute (and solopo.training.reference.shared_entry)


def cache_root() -> Path:
    """$SOLOPO_CACHE, else ~/.cache/solopo: the embedded model's weights and every cache kind live under it."""
    return Path(os.environ.get("SOLOPO_CACHE", Path.home() / ".cache" / "solopo"))


def digest(*parts: Any) -> str:
    """sha256 over the canonical JSON of each part (sorted keys, no spaces), one part a line.

    Equal values give equal digests whatever their dict order or tuple/list spelling; each part is encoded on its
    own, so a long list of rows (every pair's token ids) is never one string in memory."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, separators=(",", ":")).encode())
        h.update(b"\n")  # numbers are not self-delimiting: [1, 2] and [12] must differ
    return h.hexdigest()


def file_digest(file: Path | BinaryIO) -> str:
    """sha256 of a file's bytes (a path, or a file open for reading: a member of a zip archive), read in 1 MiB
    blocks."""
    h = hashlib.sha256()
    with open(file, "rb") if isinstance(file, (str, Path)) else contextlib.nullcontext(file) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[bool]:
    """An exclusive flock on the file ``path`` (created when absent) for the block: processes queue on it. Lock files
    stay: removing one while another process waits on it would let a third lock a new file. Where no lock can be taken
    (read-only folder, a file system without locks) the block runs unlocked: at worst work is done twice, and what it
    writes through atomic_file is still whole. The block gets whether it holds the lock."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = True
        except OSError:
            locked = False
        yield locked
    finally:
        os.close(fd)  # releases the lock


class FileFailed(OSError):
    """A file or folder that could not be read or written, in one line: ``could not VERB PATH: CAUSE``. ``filename``
    is PATH."""

    verb: ClassVar[str]  # read, write

    @classmethod
    def of(cls, path: Path | str, err: OSError) -> FileFailed:
        return cls(err.errno, f"could not {cls.verb} {path}: {err.strerror or err}", str(path))

    def __str__(self) -> str:
        # A DataLoader worker's failure is rebuilt in the parent from one argument, the worker's traceback (torch's
        # ExceptionWrapper): no strerror, only that text, which OSError's own str() shows.
        return self.strerror if self.strerror is not None else super().__str__()


class WriteFailed(FileFailed):
    """A failed write; PATH is what was being written, not the temporary name it was written under."""

    verb = "write"


class ReadFailed(FileFailed):
    """A failed read of an input file (no permission, an I/O error): no write of the run failed."""

    verb = "read"


@contextlib.contextmanager
def _named(failure: type[FileFailed], path: Path) -> Iterator[None]:
    try:
        yield
    except FileFailed:  # named already, by a reading or writing block inside this one
        raise
    except OSError as err:
        raise failure.of(path, err) from err


def writing(path: Path) -> contextlib.AbstractContextManager[None]:
    """The block writes ``path`` (under temporary names): any OSError it raises is raised as a WriteFailed naming
    ``path``, but for the reads within it that a ``reading`` block names."""
    return _named(WriteFailed, path)


def reading(path: Path) -> contextlib.AbstractContextManager[None]:
    """The block reads the input file ``path``: any OSError it raises is raised as a ReadFailed naming ``path``, so
    that a read inside a ``writing`` block is not reported as a failed write."""
    return _named(ReadFailed, path)


def failed_write(err: BaseException) -> WriteFailed | None:
    """The write that ``err`` reports, or that failed first while ``err`` was being handled (a trainer stopping on a
    failed checkpoint writes its logs, which fail too on a full disk): a WriteFailed on err's chain of causes, else
    an OSError of a full disk or quota from a writer that names no path of its own (the CSV log's, Lightning's);
    None when ``err`` is no failed write."""
    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    named = [e for e in chain if isinstance(e, WriteFailed)]
    full = [e for e in chain if isinstance(e, OSError) and e.errno in FULL]
    if named:
        return named[-1]  # the earliest
    if full:
        return WriteFailed.of(full[-1].filename or "an output file", full[-1])
    return None


@contextlib.contextmanager
def stop_on_failed_writes() -> Iterator[None]:
    """An entry point's body: a failed write (failed_write) ends the process with its one line, status 2."""
    try:
        yield
    except Exception as err:
        write = failed_write(err)
        if write is None:
            raise
        stop(str(write))


def temporary_name(path: Path) -> Path:
    """A name beside ``path`` that is this writer's alone and says whose it is: ``.NAME.HOST.PID.RANDOM.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def remove_abandoned(path: Path) -> list[Path]:
    """Removes the temporary files and folders (temporary_name) of writers of ``path`` that are certainly gone: a
    process of this host that no longer runs, or anything untouched for ABANDONED_AFTER_S (a writer on another host of a
    shared file system). Call it holding ``path``'s lock (file_lock), which every writer holds while it writes: a
    process id of another pid namespace on this host may look gone. Returns what it removed."""
    path, removed = Path(path), []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        host, _, pid = tmp.name[len(path.name) + 2:-len(".tmp")].rpartition(".")[0].rpartition(".")
        gone = host == socket.gethostname() and pid.isdigit() and not _running(int(pid))
        if not gone and time.time() - _last_change(tmp) <= ABANDONED_AFTER_S:
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _last_change(path: Path) -> float:
    """The latest modification time of ``path`` and, for a folder, of anything in it."""
    times = []
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        with contextlib.suppress(OSError):  # removed meanwhile
            times.append(item.lstat().st_mtime)
    return max(times, default=0.0)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[Any]:
    """A file object that becomes ``path`` when the block ends without error: it is a temporary file of this
    writer's own name in the same directory (temporary_name), flushed to disk, then renamed over ``path``. Readers see
    the old file or the whole new one; concurrent writers of one path never share a temporary file, and the last
    rename wins. Any OSError (full disk, read-only directory) removes the temporary file, leaves the old file as it
    was and is raised as a WriteFailed naming ``path``."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            # O_EXCL: the name is this writer's alone; 0o666 under the umask, as open() would create it
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # absent, or its folder never was one
            tmp.unlink()
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


@dataclass(frozen=True)
class DiskCache:
    """The entries of one kind of cached value (``kind``: "pairs", "reference", "eval") in the folder ``root``."""

    root: Path
    kind: str
    verify: str = "warn"

    def __post_init__(self) -> None:
        if self.verify not in VERIFY:
            raise ValueError(f"cache.verify={self.verify!r}; choose one of {', '.join(VERIFY)}")

    @classmethod
    def under_root(cls, kind: str, verify: str) -> DiskCache:
        """The cache of ``kind`` in its folder of cache_root()."""
        return cls(cache_root() / kind, kind, verify)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str, check: Callable[[Any], T] = lambda payload: payload) -> T | None:
        """check(payload) of the entry stored under ``key``, or None when there is none or it cannot be trusted: it
        does not parse, is of another format, holds another key, its payload does not match its digest, or ``check``
        raises ValueError, KeyError, TypeError or IndexError (a payload of the wrong shape). An untrusted entry is
        reported in one line (verify="strict": the run stops with that line)."""
        path = self.path(key)
        try:
            entry = json.loads(path.read_text())
        except (FileNotFoundError, NotADirectoryError):  # no entry yet (a folder that cannot be made: see put)
            return None
        except (OSError, ValueError) as err:  # unreadable, cut short, not JSON
            return self._reject(path, f"unreadable: {err}")
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            return self._reject(path, "not a solopo cache entry of this version")
        if entry.get("key") != key:  # a file copied or renamed under another entry's name
            return self._reject(path, f"it holds entry {entry.get('key')}")
        if digest(entry.get("payload")) != entry.get("digest"):
            return self._reject(path, "its payload does not match its digest: edited or damaged since it was written")
        try:
            return check(entry["payload"])
        except (ValueError, KeyError, TypeError, IndexError) as err:
            return self._reject(path, f"{type(err).__name__}: {err}")

    def put(self, key: str, payload: Any, meta: dict | None = None) -> None:
        """Stores ``payload`` under ``key`` with its digest and ``meta`` (what it was computed from, for people
        reading the file); a failed write is reported in one line and otherwise ignored."""
        entry = {"format": FORMAT, "kind": self.kind, "key": key, "meta": meta or {}, "digest": digest(payload),
                 "payload": payload}
        try:
            atomic_write_text(self.path(key), json.dumps(entry))
        except OSError as err:
            log.warning("%s cache: %s; the run goes on without caching it", self.kind, err.strerror)

    def get_or_compute(self, key: str, compute: Callable[[], T], check: Callable[[Any], T] = lambda payload: payload,
                       meta: dict | None = None, desc: str | None = None) -> T:
        """The entry under ``key`` (see get), else compute()'s value, stored. Processes asking for one key at once
        queue on its lock: the first computes and stores, the others then read its entry. A writer of the entry
        killed before its rename left a temporary file, removed before this one writes (remove_abandoned)."""
        with file_lock(self.root / f"{key}.lock") as locked:
            value = self.get(key, check)
            if value is not None:
                log.info("%s from cache %s", desc or self.kind, self.path(key))
                LOOKUPS.read += 1
                return value
            if locked:
                remove_abandoned(self.path(key))
            value = compute()
            LOOKUPS.computed += 1
            self.put(key, value, meta)
        return value

    def _reject(self, path: Path, problem: str) -> None:
        line = f"{self.kind} cache {path} is unusable ({problem})"
        if self.verify == "strict":
            stop(f"{line}; cache.verify=strict stops the run (delete the file to recompute it, "
                 "or set cache.verify=warn)")
        log.warning("%s; recomputing it", line)
        return None
