"""The embedding store: frozen-encoder outputs on disk, shared by every process on the machine.

    cache = EmbeddingCache(root, enc)                # frozen encoder outputs, one per unique text
    x = cache.get(texts)                             # encodes only texts it has not seen before

Shards are written whole and renamed into place, so a crashed writer leaves nothing half-read; one
process at a time encodes into a folder (a file lock), the others wait and then read its shards. A disk
too full for a shard raises ``CacheFullError`` naming the folder and the bytes it needs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from core.models.encoders import TextEncoder, segment_features, unique_segments


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class CacheFullError(OSError):
    """The embedding cache's disk has no room for the shards a ``get`` must write.

    An ``OSError`` (errno ENOSPC), so code that handles disk errors still catches it; its message names
    the cache folder, the bytes needed and the bytes free. ``path``, ``needed`` and ``free`` hold them.
    """

    def __init__(self, path: Path, needed: int, free: int, detail: str):
        super().__init__(errno.ENOSPC, detail)
        self.path, self.needed, self.free = path, needed, free
        self.filename = str(path)

    def __str__(self) -> str:
        return self.strerror


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


# the threads of this process that hold a cache folder's encoder lock, so a nested ``get`` (another
# EmbeddingCache on the same folder, called from within) does not wait for itself
_HELD: dict[str, int] = {}
_HELD_LOCK = threading.Lock()


class EmbeddingCache:
    """Frozen-encoder outputs on disk: float16, memory-mapped, one row per unique text.

    Layout: ``root/<encoder identity>/shard-<uuid>.npy`` (float16 (n, D)) beside
    ``shard-<uuid>.keys.json`` (the sha1 of each row's text, in order). A shard is written to a
    temporary name and renamed into place, keys last, so a reader sees whole shards or none, and
    two runs filling the cache at once (even without the lock below) only risk encoding a text
    twice, never a torn file.
    ``encoded`` counts the encoder forward passes (texts) this object has paid for.

    Missing texts are encoded ``shard_texts`` at a time and each batch is stored as its own shard
    at once, so a run that fails midway (a full disk, a crash, a kill) keeps what it encoded and the
    next run encodes only the rest. A disk without room raises ``CacheFullError`` (the folder, the
    space needed and free) before encoding when it can tell, and never leaves a temporary file.

    Processes on one machine take turns: the one encoding holds an advisory lock
    (``.encoding.lock`` in the encoder's folder, ``fcntl.flock``); another that needs texts waits
    for it (logged once), picks up its shards as they land and encodes only what is still missing.
    Where the lock cannot be taken (a read-only cache, a file system without locks) it is logged
    and encoding goes on without it.
    """

    LOCK_NAME = ".encoding.lock"

    def __init__(self, root: str | Path, encoder: TextEncoder, batch_size: int = 64,
                 log: Callable[[str], None] | None = None, shard_texts: int = 1024,
                 poll_s: float = 0.5):
        self.encoder = encoder
        self.dir = Path(root) / encoder.identity()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.batch_size = batch_size
        self.shard_texts = max(1, int(shard_texts))
        self.poll_s = poll_s
        self.encoded = 0
        self.waited_s = 0.0  # time spent waiting for another process's encoder
        self.set_aside: list[Path] = []  # damaged files this object renamed out of the way
        self._log = log or logging.getLogger(__name__).warning
        self._index: dict[str, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        self._seen_files: set[str] = set()
        self._lock = threading.Lock()
        self._told_no_lock = False
        self.refresh()

    def refresh(self) -> None:
        """Pick up shards written by other processes since we last looked.

        A shard that cannot be read whole (a truncated ``.npy``, a ``.keys.json`` that is not JSON,
        rows that do not match its keys or the encoder's width) is set aside: both files are renamed
        to ``*.broken-<time>`` (never deleted), the path is logged, and its texts count as missing,
        so the next ``get`` encodes them again and the run goes on.
        """
        for keys_file in sorted(self.dir.glob("shard-*.keys.json")):
            if keys_file.name in self._seen_files:
                continue
            arr_file = keys_file.with_name(keys_file.name.replace(".keys.json", ".npy"))
            if not arr_file.exists():
                self._set_aside(keys_file, None, "its .npy is missing")
                continue
            try:
                keys = json.loads(keys_file.read_text())
                if not isinstance(keys, list):
                    raise ValueError("keys file does not hold a list")
                arr = np.load(arr_file, mmap_mode="r")
                if arr.ndim != 2 or arr.shape[0] != len(keys) or arr.shape[1] != self.encoder.base_dim:
                    raise ValueError(f"shape {arr.shape} does not match {len(keys)} keys x dim {self.encoder.base_dim}")
            except (ValueError, OSError, EOFError) as err:  # JSONDecodeError is a ValueError
                self._set_aside(keys_file, arr_file, f"{type(err).__name__}: {err}")
                continue
            sid = len(self._shards)
            self._shards.append(arr)
            for row, k in enumerate(keys):
                self._index.setdefault(k, (sid, row))
            self._seen_files.add(keys_file.name)

    def _set_aside(self, keys_file: Path, arr_file: Path | None, why: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for f in (keys_file, arr_file):
            if f is None or not f.exists():
                continue
            dest = f.with_name(f"{f.name}.broken-{stamp}")
            try:
                os.replace(f, dest)
            except OSError:  # another process set it aside first
                continue
            self.set_aside.append(dest)
            self._log(f"embedding cache: set aside damaged shard file {f} -> {dest.name} ({why}); "
                      "its texts will be encoded again")

    def __len__(self) -> int:
        return len(self._index)

    def _with_segments(self, texts: Sequence[str]) -> list[str]:
        """What the cache stores for ``texts``: the texts, and with segment pooling their distinct segments."""
        return list(texts) + unique_segments(texts)[0] if self.encoder.segments else list(texts)

    def missing(self, texts: Sequence[str]) -> list[str]:
        """The distinct texts (and segments, with segment pooling) the cache does not hold yet."""
        return self._missing_plain(self._with_segments(texts))

    def _missing_plain(self, texts: Sequence[str]) -> list[str]:
        seen, out = set(), []
        for t in texts:
            k = text_key(t)
            if k not in self._index and k not in seen:
                seen.add(k)
                out.append(t)
        return out

    def get(self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """float32 (len(texts), encoder.dim) for the given texts, encoding only unseen unique ones.

        ``progress(done, total)`` counts the texts (and segments) that were missing when the call began:
        those this object encoded and those another process stored while this one waited for it.
        """
        if self.encoder.segments:
            segs, rows = unique_segments(texts)
            plain = self._get_plain(list(texts) + segs, progress)
            return segment_features(plain[:len(texts)], rows, plain[len(texts):])
        return self._get_plain(texts, progress)

    def _get_plain(self, texts: Sequence[str], progress: Callable[[int, int], None] | None) -> np.ndarray:
        """float32 (len(texts), encoder.base_dim): each text's own pooled embedding."""
        with self._lock:
            self.refresh()
            todo = self._missing_plain(texts)
            if todo:
                self._fill(texts, len(todo), progress)
            out = np.empty((len(texts), self.encoder.base_dim), dtype=np.float32)
            for i, t in enumerate(texts):
                sid, row = self._index[text_key(t)]
                out[i] = self._shards[sid][row]
            return out

    def _fill(self, texts: Sequence[str], total: int, progress: Callable[[int, int], None] | None) -> None:
        """Encode and store what ``texts`` still lack, holding the folder's encoder lock."""
        with self._encoder_lock(texts, total, progress) as todo:
            base = total - len(todo)  # stored by another process while we waited
            if progress and base:
                progress(base, total)
            if not todo:
                return
            todo.sort(key=len)  # batches pad little; each shard holds texts of like length
            self._check_room(len(todo))
            for s in range(0, len(todo), self.shard_texts):
                part = todo[s:s + self.shard_texts]
                done = base + s

                def step(d: int, _n: int, done: int = done) -> None:
                    if progress:
                        progress(done + d, total)

                emb = self.encoder.encode_plain(part, batch_size=self.batch_size, progress=step)
                self.encoded += len(part)
                self._write_shard([text_key(t) for t in part], emb.astype(np.float16), kept=base + s)

    @contextlib.contextmanager
    def _encoder_lock(self, texts: Sequence[str], total: int, progress: Callable[[int, int], None] | None):
        """Hold the folder's advisory lock; yield the texts still missing once it is ours."""
        key = str(self.dir.resolve())
        me = threading.get_ident()
        with _HELD_LOCK:
            nested = _HELD.get(key) == me
        if nested:  # this thread already holds it (a get within a get): do not wait for ourselves
            self.refresh()
            yield self._missing_plain(texts)
            return
        fd = self._open_lock()
        if fd is None:
            self.refresh()
            yield self._missing_plain(texts)
            return
        try:
            if not self._wait_for_lock(fd, texts, total, progress):
                yield []  # another process stored all of them while we waited
                return
            with _HELD_LOCK:
                _HELD[key] = me
            try:
                self.refresh()  # what the last holder stored
                yield self._missing_plain(texts)
            finally:
                with _HELD_LOCK:
                    _HELD.pop(key, None)
        finally:
            os.close(fd)  # closing the only descriptor releases the flock, also on an exception

    def _open_lock(self) -> int | None:
        path = self.dir / self.LOCK_NAME
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            pass
        try:  # a read-only cache whose lock file exists: flock works on a read-only descriptor too
            return os.open(path, os.O_RDONLY)
        except OSError as err:
            self._no_lock(f"cannot open the lock file {path} ({err})")
            return None

    def _no_lock(self, why: str) -> None:
        if not self._told_no_lock:
            self._told_no_lock = True
            self._log(f"embedding cache: {why}; encoding without it, so another process on this cache "
                      "may encode the same texts")

    def _wait_for_lock(self, fd: int, texts: Sequence[str], total: int,
                       progress: Callable[[int, int], None] | None) -> bool:
        """True once the lock is ours (or cannot be had: go on without it); False if, while waiting,
        another process stored every text we need."""
        t0, told = time.monotonic(), False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    pass
                if not told:
                    told = True
                    self._log(f"embedding cache: waiting for another process encoding into {self.dir}")
                time.sleep(self.poll_s)
                self.refresh()
                left = len(self._missing_plain(texts))
                if progress:
                    progress(total - left, total)
                if not left:
                    return False
        except OSError as err:  # e.g. ENOLCK on a network file system
            self._no_lock(f"cannot lock {self.dir / self.LOCK_NAME} ({err})")
            return True
        finally:
            self.waited_s += time.monotonic() - t0 if told else 0.0

    def _shard_bytes(self, n: int) -> int:
        """Disk taken by a shard of ``n`` texts: the .npy (128-byte header, float16 rows) and its keys
        (a quoted 40-char sha1 and ", " each), each file rounded up to whole 4 kB blocks."""
        def blocks(b: int) -> int:
            return -(-b // 4096) * 4096
        return blocks(128 + n * self.encoder.base_dim * 2) + blocks(n * 44 + 2)

    def _check_room(self, n: int) -> None:
        """Fail before encoding, not minutes later, when the disk cannot hold ``n`` more texts."""
        needed = sum(self._shard_bytes(min(self.shard_texts, n - s)) for s in range(0, n, self.shard_texts))
        try:
            free = shutil.disk_usage(self.dir).free
        except OSError:
            return
        if free < needed:
            raise CacheFullError(self.dir, needed, free,
                                 f"embedding cache {self.dir} is on a full disk: {n} texts to encode need "
                                 f"about {_mb(needed)}, {_mb(free)} free. Free some space there or point "
                                 "cache_dir (or PREFLENS_CACHE) at a bigger disk; nothing was encoded")

    def _write_shard(self, keys: list[str], arr: np.ndarray, kept: int = 0) -> None:
        name = f"shard-{uuid.uuid4().hex[:12]}"
        final_arr = self.dir / f"{name}.npy"
        tmp_arr = self.dir / f".{name}.npy.tmp"
        tmp_keys = self.dir / f".{name}.keys.json.tmp"
        placed: list[Path] = []
        try:
            with open(tmp_arr, "wb") as fh:
                np.save(fh, arr)
            os.replace(tmp_arr, final_arr)
            placed.append(final_arr)  # no keys yet: no reader sees it, so it is still ours to remove
            tmp_keys.write_text(json.dumps(keys))
            os.replace(tmp_keys, self.dir / f"{name}.keys.json")
        except OSError as err:
            for f in (tmp_arr, tmp_keys, *placed):
                with contextlib.suppress(OSError):
                    f.unlink(missing_ok=True)
            needed = self._shard_bytes(len(keys))
            try:
                free = shutil.disk_usage(self.dir).free
            except OSError:
                free = -1
            # numpy reports a short write as a bare OSError ("N requested and M written"), no errno
            if err.errno in (errno.ENOSPC, errno.EDQUOT) or 0 <= free < needed:
                raise CacheFullError(
                    self.dir, needed, free,
                    f"embedding cache {self.dir} is on a full disk: a shard of {len(keys)} texts needs "
                    f"{_mb(needed)}, {_mb(max(free, 0))} free ({type(err).__name__}: {err}). "
                    f"The {kept} texts stored before it are kept; free some space there or point cache_dir "
                    "(or PREFLENS_CACHE) at a bigger disk, and a rerun encodes only the rest") from err
            raise
        self.refresh()


def default_cache_root() -> Path:
    return Path(os.environ.get("PREFLENS_CACHE", Path.home() / ".cache" / "preflens" / "embeddings"))
