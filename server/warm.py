"""The warm tier: parked models waiting in system RAM, so their next request loads without the disk.

A parked model gives back its whole device footprint, CUDA context included: its worker process
ends like any evicted worker's. What waits in RAM outlives that process, in one of two forms (the
plan's park_form says which):

- bundle: a directory on a RAM file system (/dev/shm by default) that the old worker wrote its
  loaded form into (torch weights as safetensors, quantized ones still quantized; a CTranslate2
  copy). A new worker loads from it; a resume never reads the model's own files.
- files: the model's own mmapped files (GGUF) kept resident in the page cache: the server maps
  them and locks them with mlock where the system allows (else advises WILLNEED and leaves them
  mapped), and holds them open, so a new worker maps those very pages through
  /proc/<server pid>/fd/N even if the path has since moved.

The arbiter decides what parks and what is dropped (server/placement.py); this module does it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from backends.plan import LoadPlan
from backends.spec import BaseSpec

log = logging.getLogger("modelyard.warm")

DEFAULT_ROOT = Path("/dev/shm")
_HEADROOM = 1.05  # a bundle needs a little more than its estimate (configs, tokenizers)


class NotParkable(Exception):
    """This model cannot be parked now (its engine cannot, or the RAM file system is full)."""


@dataclass(eq=False)
class WarmCopy:
    """One parked model's copy in RAM."""

    model_id: str
    plan: LoadPlan  # the plan it was parked with, loading from this copy
    bytes: int
    form: str  # "tmpfs" or "page_cache"
    fingerprint: tuple  # the model's files when the parked copy was loaded
    locked: bool = False  # page-cache pages pinned with mlock
    location: Path | None = None
    _pin: Any = field(default=None, repr=False)


class Parking(Protocol):
    """The worker end of a bundle park (server/worker_client.py's WorkerProcess)."""

    async def park(self, dest: Path) -> int: ...


def fingerprint(spec: BaseSpec) -> tuple:
    """The model's files as they are now (size, mtime, inode per file): a parked copy is stale once
    they change. Unreadable or missing files give an empty fingerprint."""
    found: list[tuple] = []
    try:
        for path in spec.files():
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                stat = file.stat()
                found.append((str(file), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    except OSError:
        return ()
    return tuple(found)


class WarmStore:
    """Parks, keeps and drops warm copies. One per server; `close()` removes everything."""

    def __init__(self, root: Path | None = None):
        self._parent = root if root is not None else DEFAULT_ROOT
        self._root: Path | None = None

    @property
    def root(self) -> Path | None:
        """This store's directory for bundles, once one was parked."""
        return self._root

    @property
    def bundles(self) -> bool:
        """Whether a RAM directory for bundles is available."""
        return self._parent.is_dir() and os.access(self._parent, os.W_OK)

    def fingerprint(self, spec: BaseSpec) -> tuple:
        return fingerprint(spec)

    def fresh(self, copy: WarmCopy, spec: BaseSpec) -> bool:
        """Whether `copy` still is the model: its files unchanged since, or gone or unreadable (the
        copy is then all there is)."""
        now = fingerprint(spec)
        return not now or now == copy.fingerprint

    async def park(self, model_id: str, plan: LoadPlan, worker: Parking, fingerprint: tuple) -> WarmCopy:
        if plan.park_form == "files":
            return await asyncio.to_thread(self._pin_files, model_id, plan, fingerprint)
        if plan.park_form != "bundle":
            raise NotParkable(f"{plan.backend} models do not park")
        if not self.bundles:
            raise NotParkable(f"no RAM directory at {self._parent} for parked models")
        root = self._ensure_root()
        free = shutil.disk_usage(root).free
        if free < plan.warm_mb() * 1024 * 1024 * _HEADROOM:
            raise NotParkable(f"{root} has {free >> 20} MiB free, the copy needs about {plan.warm_mb():.0f}")
        dest = root / f"{re.sub(r'[^A-Za-z0-9._-]', '_', model_id)}-{uuid.uuid4().hex[:8]}"
        dest.mkdir()
        try:
            written = await worker.park(dest)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, dest, True)
            raise
        return WarmCopy(model_id, plan.from_warm(dest), written, "tmpfs", fingerprint, location=dest)

    def _pin_files(self, model_id: str, plan: LoadPlan, fingerprint: tuple) -> WarmCopy:
        files = plan.warm_files()
        if len(files) != 1:
            raise NotParkable(f"{model_id}: only single-file models park in the page cache")
        pin = PinnedFile(files[0])
        location = Path(f"/proc/{os.getpid()}/fd/{pin.fd}")
        return WarmCopy(model_id, plan.from_warm(location), pin.size, "page_cache", fingerprint, locked=pin.locked,
                        location=location, _pin=pin)

    def drop(self, copy: WarmCopy) -> None:
        if copy._pin is not None:
            copy._pin.close()
            copy._pin = None
        elif copy.form == "tmpfs" and copy.location is not None:
            shutil.rmtree(copy.location, ignore_errors=True)

    def close(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def _ensure_root(self) -> Path:
        if self._root is None:
            self._sweep()
            # One directory per store: a test process may run several servers at once.
            self._root = self._parent / f"modelyard-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self._root.mkdir(mode=0o700)
        return self._root

    def _sweep(self) -> None:
        """Remove what servers that died without cleaning up left behind (their pid is gone)."""
        for stale in self._parent.glob("modelyard-*-*"):
            pid = stale.name.split("-")[1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_PROT_READ, _MAP_SHARED, _MADV_WILLNEED = 1, 1, 3


class PinnedFile:
    """A file mapped into this process and locked in RAM (mlock), or, where locking is not allowed
    (RLIMIT_MEMLOCK in most containers), mapped and read ahead so its pages stay hot."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size
        self.locked = False
        self._address: int | None = None
        if self.size == 0:
            return
        libc = _libc()
        address = libc.mmap(None, self.size, _PROT_READ, _MAP_SHARED, self.fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            os.close(self.fd)
            raise NotParkable(f"cannot map {path.name}: {os.strerror(ctypes.get_errno())}")
        self._address = address
        self.locked = libc.mlock(ctypes.c_void_p(address), ctypes.c_size_t(self.size)) == 0
        if not self.locked:
            log.info("cannot lock %s in RAM (%s): it stays mapped and read ahead", path.name,
                     os.strerror(ctypes.get_errno()))
            libc.madvise(ctypes.c_void_p(address), ctypes.c_size_t(self.size), _MADV_WILLNEED)

    def close(self) -> None:
        if self._address is not None:
            _libc().munmap(ctypes.c_void_p(self._address), ctypes.c_size_t(self.size))  # unlocks too
            self._address = None
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    return libc
