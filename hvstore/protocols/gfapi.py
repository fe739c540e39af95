"""libgfapi (GlusterFS 10's client library) through ctypes: mounts, files, 64-bit pread/pwrite, POSIX locks.

Why our own layer and not PyPI ``gfapi`` 1.2: on Python 3.11 that binding fails to import
(``collections.Iterator``); it declares ``glfs_fsync``/``glfs_fdatasync``/``glfs_ftruncate`` with their
pre-6.0 signatures while the library's default symbols (``@@GFAPI_6.0``) take two extra ``struct glfs_stat``
pointers, so the library reads garbage pointers and segfaults; offsets are declared ``c_int``, so anything
past 2 GiB fails; and its ``Volume.__del__`` calls ``glfs_fini``, which costs ~10 s (upstream won't fix)
whenever a mount object is garbage-collected or the interpreter exits. What does work there is only the
namespace calls (stat, mkdir, readdir, rename, unlink), each one line of ctypes here. Mixing two sets of
declarations over one library in one process would be harder to reason about than declaring the ~25 calls
we use once, with the 6.0 signatures, so this module uses ctypes for everything and never imports the
PyPI package.

Rules this module keeps:
- One long-lived mount per (server, port, volume) per process (``mount()`` caches it in a module-level
  registry); ``glfs_fini`` is never called on a working mount, not even at exit: a process that exits
  simply drops its connections (data is durable once ``fsync`` returned). Only a mount whose
  ``glfs_init`` failed is finalised (that is immediate). A forked child gets a fresh registry (the
  parent's mount threads do not exist in the child).
- Every open file has its own lock owner (``glfs_fd_set_lkowner`` with random bytes), so POSIX locks
  behave like Linux OFD locks: two files open in one process conflict, and closing a file releases only
  its own locks. A killed process's locks are freed by the bricks when its connection drops (2-4 ms here).
- Errors are ``OSError`` with the errno libgfapi set (``FileNotFoundError``, ``BlockingIOError`` ...);
  a mount that cannot be established raises ``GlusterUnavailable``.
What it cannot do: leases/upcalls (Gluster leases do not fence; see ENVIRONMENT.md), async I/O.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Self

from hvstore.errors import BackendUnavailable

LIBRARY = "libgfapi.so.0"
DEFAULT_PORT = 24007
SEEK_DATA, SEEK_HOLE = 3, 4  # <unistd.h> on Linux; os.SEEK_DATA is missing on some builds
LOCK_OWNER_BYTES = 16
_DIRENT_NAME_OFFSET = 19  # struct dirent on x86_64: d_ino 8, d_off 8, d_reclen 2, d_type 1, then d_name


class GlusterUnavailable(BackendUnavailable):
    """The volume could not be mounted (glusterd down, volume unknown or stopped, bricks unreachable)."""


class Stat(ctypes.Structure):
    """``struct stat`` as glibc lays it out on x86_64 (what libgfapi fills in)."""

    _fields_ = [
        ("st_dev", ctypes.c_uint64), ("st_ino", ctypes.c_uint64), ("st_nlink", ctypes.c_uint64),
        ("st_mode", ctypes.c_uint32), ("st_uid", ctypes.c_uint32), ("st_gid", ctypes.c_uint32),
        ("_pad0", ctypes.c_int32), ("st_rdev", ctypes.c_uint64), ("st_size", ctypes.c_int64),
        ("st_blksize", ctypes.c_int64), ("st_blocks", ctypes.c_int64),
        ("st_atime", ctypes.c_int64), ("st_atime_nsec", ctypes.c_int64),
        ("st_mtime", ctypes.c_int64), ("st_mtime_nsec", ctypes.c_int64),
        ("st_ctime", ctypes.c_int64), ("st_ctime_nsec", ctypes.c_int64),
        ("_reserved", ctypes.c_int64 * 3),
    ]


class Flock(ctypes.Structure):
    """``struct flock`` on x86_64 (64-bit off_t; F_SETLK == F_SETLK64 there)."""

    _fields_ = [
        ("l_type", ctypes.c_short), ("l_whence", ctypes.c_short), ("l_start", ctypes.c_int64),
        ("l_len", ctypes.c_int64), ("l_pid", ctypes.c_int32),
    ]


@dataclass(frozen=True)
class FileStat:
    size_bytes: int
    allocated_bytes: int  # st_blocks * 512
    mode: int
    mtime_s: float

    @classmethod
    def from_c(cls, st: Stat) -> FileStat:
        return cls(st.st_size, st.st_blocks * 512, st.st_mode, st.st_mtime + st.st_mtime_nsec / 1e9)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Give every function we call its GFAPI_6.0 prototype (the default symbol versions in 10.x)."""
    vp, cp, i, sz, off = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_int64
    protos: dict[str, tuple[object, list[object]]] = {
        "glfs_new": (vp, [cp]),
        "glfs_set_volfile_server": (i, [vp, cp, cp, i]),
        "glfs_set_logging": (i, [vp, cp, i]),
        "glfs_init": (i, [vp]),
        "glfs_fini": (i, [vp]),
        "glfs_open": (vp, [vp, cp, i]),
        "glfs_creat": (vp, [vp, cp, i, ctypes.c_uint32]),
        "glfs_close": (i, [vp]),
        "glfs_pread": (ctypes.c_ssize_t, [vp, vp, sz, off, i, vp]),  # + struct glfs_stat *poststat
        "glfs_pwrite": (ctypes.c_ssize_t, [vp, vp, sz, off, i, vp, vp]),  # + prestat, poststat
        "glfs_fsync": (i, [vp, vp, vp]),  # + prestat, poststat
        "glfs_fdatasync": (i, [vp, vp, vp]),
        "glfs_ftruncate": (i, [vp, off, vp, vp]),
        "glfs_lseek": (off, [vp, off, i]),
        "glfs_fstat": (i, [vp, ctypes.POINTER(Stat)]),
        "glfs_stat": (i, [vp, cp, ctypes.POINTER(Stat)]),
        "glfs_mkdir": (i, [vp, cp, ctypes.c_uint32]),
        "glfs_unlink": (i, [vp, cp]),
        "glfs_rmdir": (i, [vp, cp]),
        "glfs_rename": (i, [vp, cp, cp]),
        "glfs_link": (i, [vp, cp, cp]),
        "glfs_opendir": (vp, [vp, cp]),
        "glfs_readdir": (vp, [vp]),
        "glfs_closedir": (i, [vp]),
        "glfs_posix_lock": (i, [vp, i, ctypes.POINTER(Flock)]),
        "glfs_fd_set_lkowner": (i, [vp, vp, i]),
    }
    for name, (restype, argtypes) in protos.items():
        func = getattr(lib, name)
        func.restype = restype
        func.argtypes = argtypes
    return lib


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def library() -> ctypes.CDLL:
    """libgfapi with our prototypes, loaded once. GlusterUnavailable if the library is not installed."""
    global _lib
    with _lib_lock:
        if _lib is None:
            try:
                _lib = _declare(ctypes.CDLL(LIBRARY, use_errno=True))
            except OSError as exc:
                raise GlusterUnavailable(f"cannot load {LIBRARY} ({exc}); install libgfapi0 (./hv setup)") from None
        return _lib


def _raise_errno(what: str, path: str | None = None) -> None:
    code = ctypes.get_errno() or errno.EIO
    raise OSError(code, f"{what}: {os.strerror(code)}", path)


def _check(ret: int, what: str, path: str | None = None) -> int:
    if ret < 0:
        _raise_errno(what, path)
    return ret


class GlusterFile:
    """One open file of a mounted volume. Lifecycle: open -> (I/O, locks) -> ``close`` (idempotent)."""

    def __init__(self, mount: GlusterMount, handle: int, path: str) -> None:
        self.mount = mount
        self.path = path
        self._fd: int | None = handle
        owner = secrets.token_bytes(LOCK_OWNER_BYTES)
        _check(library().glfs_fd_set_lkowner(handle, owner, len(owner)), "glfs_fd_set_lkowner", path)

    @property
    def handle(self) -> int:
        if self._fd is None:
            raise ValueError(f"I/O on closed gluster file {self.path}")
        return self._fd

    def pread(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at end of file). 64-bit offsets."""
        buf = ctypes.create_string_buffer(length)
        got = 0
        while got < length:
            n = library().glfs_pread(self.handle, ctypes.byref(buf, got), length - got, offset + got, 0, None)
            _check(n, "glfs_pread", self.path)
            if n == 0:
                break
            got += n
        return buf.raw[:got]

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` at ``offset`` (loops over short writes). Durable only after ``fsync``."""
        raw = bytes(data)
        buf = ctypes.c_char_p(raw)
        done = 0
        while done < len(raw):
            ptr = ctypes.cast(buf, ctypes.c_void_p).value + done  # type: ignore[operator]
            n = library().glfs_pwrite(self.handle, ptr, len(raw) - done, offset + done, 0, None, None)
            _check(n, "glfs_pwrite", self.path)
            done += n

    def fsync(self) -> None:
        _check(library().glfs_fsync(self.handle, None, None), "glfs_fsync", self.path)

    def fdatasync(self) -> None:
        _check(library().glfs_fdatasync(self.handle, None, None), "glfs_fdatasync", self.path)

    def ftruncate(self, length: int) -> None:
        _check(library().glfs_ftruncate(self.handle, length, None, None), "glfs_ftruncate", self.path)

    def fstat(self) -> FileStat:
        st = Stat()
        _check(library().glfs_fstat(self.handle, ctypes.byref(st)), "glfs_fstat", self.path)
        return FileStat.from_c(st)

    def size(self) -> int:
        return self.fstat().size_bytes

    def lseek(self, offset: int, whence: int) -> int:
        return _check(library().glfs_lseek(self.handle, offset, whence), "glfs_lseek", self.path)

    def data_extents(self) -> Iterator[tuple[int, int]]:
        """(offset, length) of every range that may hold data (SEEK_DATA/SEEK_HOLE); holes read as zeros."""
        size, offset = self.size(), 0
        while offset < size:
            try:
                start = self.lseek(offset, SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # nothing but holes after offset
                    return
                if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                    yield (offset, size - offset)  # brick file system without SEEK_DATA
                    return
                raise
            end = min(self.lseek(start, SEEK_HOLE), size)
            yield (start, end - start)
            offset = end

    # -- POSIX byte-range locks (fcntl F_SETLK / F_SETLKW / F_GETLK semantics, owner = this file) ----
    def lock(self, *, exclusive: bool = True, wait: bool = False, start: int = 0, length: int = 0) -> None:
        """Lock ``[start, start+length)`` (length 0: to end of file, however it grows).

        Without ``wait`` a conflicting lock raises ``BlockingIOError`` (EAGAIN) at once; with ``wait`` the
        call blocks until granted. Re-locking a range this file holds converts it (shared <-> exclusive).
        """
        self._posix_lock(fcntl.F_SETLKW if wait else fcntl.F_SETLK,
                         fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK, start, length)

    def unlock(self, *, start: int = 0, length: int = 0) -> None:
        self._posix_lock(fcntl.F_SETLK, fcntl.F_UNLCK, start, length)

    def lock_conflicts(self, *, exclusive: bool = True, start: int = 0, length: int = 0) -> bool:
        """F_GETLK: would ``lock`` of this range conflict with another owner's lock right now?

        (The bricks do not report the holder's pid through libgfapi: it comes back 0.)
        """
        request = Flock(fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK, os.SEEK_SET, start, length, 0)
        _check(library().glfs_posix_lock(self.handle, fcntl.F_GETLK, ctypes.byref(request)),
               "glfs_posix_lock(F_GETLK)", self.path)
        return request.l_type != fcntl.F_UNLCK

    def _posix_lock(self, cmd: int, lock_type: int, start: int, length: int) -> None:
        request = Flock(lock_type, os.SEEK_SET, start, length, 0)
        ret = library().glfs_posix_lock(self.handle, cmd, ctypes.byref(request))
        if ret < 0:
            code = ctypes.get_errno() or errno.EIO
            if code in (errno.EACCES, errno.EAGAIN):  # POSIX allows either for a conflicting lock
                code = errno.EAGAIN
            raise OSError(code, f"glfs_posix_lock: {os.strerror(code)}", self.path)

    def close(self) -> None:
        """Close the file (its locks are released). Does not fsync: call ``fsync`` first if it matters."""
        if self._fd is not None:
            handle, self._fd = self._fd, None
            _check(library().glfs_close(handle), "glfs_close", self.path)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GlusterMount:
    """One mounted volume (a ``glfs_t``). Obtain it through ``mount()``; it is never unmounted."""

    def __init__(self, server: str, port: int, volume: str, handle: int) -> None:
        self.server = server
        self.port = port
        self.volume = volume
        self._fs = handle

    def open(self, path: str, flags: int = os.O_RDONLY, mode: int = 0o644) -> GlusterFile:
        """Open ``path`` (absolute inside the volume) with ``os.O_*`` flags; O_CREAT creates it."""
        lib = library()
        if flags & os.O_CREAT:
            handle = lib.glfs_creat(self._fs, path.encode(), flags, mode)
        else:
            handle = lib.glfs_open(self._fs, path.encode(), flags)
        if not handle:
            _raise_errno("open", path)
        try:
            return GlusterFile(self, handle, path)
        except OSError:
            lib.glfs_close(handle)
            raise

    def stat(self, path: str) -> FileStat:
        st = Stat()
        _check(library().glfs_stat(self._fs, path.encode(), ctypes.byref(st)), "stat", path)
        return FileStat.from_c(st)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except FileNotFoundError:
            return False
        return True

    def mkdir(self, path: str, mode: int = 0o755, *, exist_ok: bool = False) -> None:
        try:
            _check(library().glfs_mkdir(self._fs, path.encode(), mode), "mkdir", path)
        except FileExistsError:
            if not exist_ok:
                raise

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        """``mkdir -p``."""
        current = ""
        for part in [p for p in path.split("/") if p]:
            current += "/" + part
            self.mkdir(current, mode, exist_ok=True)

    def unlink(self, path: str) -> None:
        _check(library().glfs_unlink(self._fs, path.encode()), "unlink", path)

    def rmdir(self, path: str) -> None:
        _check(library().glfs_rmdir(self._fs, path.encode()), "rmdir", path)

    def rename(self, old: str, new: str) -> None:
        """rename(2): replaces ``new`` if it exists."""
        _check(library().glfs_rename(self._fs, old.encode(), new.encode()), "rename", old)

    def link(self, old: str, new: str) -> None:
        """link(2): FileExistsError if ``new`` exists (the atomic no-clobber primitive)."""
        _check(library().glfs_link(self._fs, old.encode(), new.encode()), "link", new)

    def listdir(self, path: str) -> list[str]:
        """Names in directory ``path`` without ``.`` and ``..``, sorted."""
        lib = library()
        handle = lib.glfs_opendir(self._fs, path.encode())
        if not handle:
            _raise_errno("opendir", path)
        names = []
        try:
            while True:
                ctypes.set_errno(0)
                entry = lib.glfs_readdir(handle)
                if not entry:
                    if ctypes.get_errno():
                        _raise_errno("readdir", path)
                    break
                name = ctypes.string_at(entry + _DIRENT_NAME_OFFSET).decode(errors="surrogateescape")
                if name not in (".", ".."):
                    names.append(name)
        finally:
            lib.glfs_closedir(handle)
        return sorted(names)


_mounts: dict[tuple[str, int, str], GlusterMount] = {}
_mounts_lock = threading.Lock()


def _forget_mounts_in_child() -> None:
    global _mounts_lock
    _mounts.clear()  # the parent's glfs_t has no threads in the child; it must never be used there
    _mounts_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_mounts_in_child)


def mount(volume: str, *, server: str = "127.0.0.1", port: int = DEFAULT_PORT,
          log_file: str = "/dev/null", log_level: int = 4) -> GlusterMount:
    """The process's mount of ``volume`` on ``server:port``, established on first use (~50-100 ms).

    ``log_level`` is libglusterfs's (0 none .. 9 trace; 4 = warnings). Raises GlusterUnavailable when
    glusterd cannot be reached or the volume does not exist or is not started.
    """
    key = (server, port, volume)
    with _mounts_lock:
        found = _mounts.get(key)
        if found is not None:
            return found
        lib = library()
        fs = lib.glfs_new(volume.encode())
        if not fs:
            _raise_errno("glfs_new", volume)
        if lib.glfs_set_volfile_server(fs, b"tcp", server.encode(), port) < 0:
            lib.glfs_fini(fs)
            raise GlusterUnavailable(f"gluster volume {volume}: bad volfile server {server}:{port}")
        lib.glfs_set_logging(fs, log_file.encode(), log_level)
        if lib.glfs_init(fs) < 0:
            code = ctypes.get_errno()
            # Finalising a glfs_t whose init failed is immediate (measured 0.0 s) and frees its threads,
            # so a daemon retrying against a stopped glusterd does not pile them up.
            lib.glfs_fini(fs)
            raise GlusterUnavailable(
                f"cannot mount gluster volume {volume} from {server}:{port}: {os.strerror(code) if code else 'failed'}"
                " (is glusterd running and the volume started? 'hvstore lab up gluster')"
            )
        found = _mounts[key] = GlusterMount(server, port, volume, fs)
        return found

