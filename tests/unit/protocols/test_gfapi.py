"""ABI assumptions of the libgfapi ctypes layer, checked against glibc and libgfapi.so.0 (no Gluster service).

The layer hands libgfapi our own ``struct stat``/``struct flock`` layouts and reads ``struct dirent``
names at a fixed offset; libgfapi fills them exactly as glibc would, so glibc is the oracle here.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import subprocess
import sys
from pathlib import Path

from hvstore.protocols import gfapi

libc = ctypes.CDLL(None, use_errno=True)


def test_stat_layout_matches_glibc(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 5000)
    os.chmod(path, 0o640)
    st = gfapi.Stat()
    assert libc.stat(str(path).encode(), ctypes.byref(st)) == 0
    expected = os.stat(path)
    assert (st.st_ino, st.st_size, st.st_mode, st.st_nlink, st.st_blocks) == (
        expected.st_ino, expected.st_size, expected.st_mode, expected.st_nlink, expected.st_blocks)
    assert st.st_mtime * 10**9 + st.st_mtime_nsec == expected.st_mtime_ns
    assert ctypes.sizeof(gfapi.Stat) == 144


def test_flock_layout_matches_the_kernel(tmp_path: Path) -> None:
    path = tmp_path / "locked"
    path.write_bytes(bytes(4096))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl,sys,os; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX, 100, 100, os.SEEK_SET);"
         "print('held', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        fd = os.open(path, os.O_RDWR)
        try:
            query = gfapi.Flock(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
            assert libc.fcntl(fd, fcntl.F_GETLK, ctypes.byref(query)) == 0
            assert (query.l_type, query.l_start, query.l_len, query.l_pid) == (fcntl.F_WRLCK, 100, 100, holder.pid)
        finally:
            os.close(fd)
    finally:
        holder.kill()
        holder.wait()


def test_dirent_name_offset_matches_glibc(tmp_path: Path) -> None:
    (tmp_path / "volume-1.qcow2").touch()
    libc.opendir.restype = ctypes.c_void_p
    libc.readdir.restype = ctypes.c_void_p
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.closedir.argtypes = [ctypes.c_void_p]
    handle = libc.opendir(str(tmp_path).encode())
    names = set()
    try:
        while entry := libc.readdir(handle):
            names.add(ctypes.string_at(entry + gfapi._DIRENT_NAME_OFFSET).decode())
    finally:
        libc.closedir(handle)
    assert names == {".", "..", "volume-1.qcow2"}


def test_our_prototypes_are_the_symbol_versions_the_loader_binds() -> None:
    """fsync/fdatasync/ftruncate/pread/pwrite changed signature in GFAPI_6.0 (PyPI gfapi 1.2 still uses the
    3.4.0 ones and segfaults); dlsym must resolve to the 6.0 versions our prototypes describe."""
    lib = gfapi.library()
    libc.dlvsym.restype = ctypes.c_void_p
    libc.dlvsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    expected_args = {"glfs_fsync": 3, "glfs_fdatasync": 3, "glfs_ftruncate": 4, "glfs_pread": 6, "glfs_pwrite": 7}
    for name, nargs in expected_args.items():
        func = getattr(lib, name)
        assert len(func.argtypes) == nargs
        bound = ctypes.cast(func, ctypes.c_void_p).value
        assert bound == libc.dlvsym(lib._handle, name.encode(), b"GFAPI_6.0"), name
    assert lib.glfs_lseek.restype is ctypes.c_int64  # offsets past 2 GiB
    assert lib.glfs_pread.argtypes[3] is ctypes.c_int64


def test_a_forked_child_does_not_inherit_mounts() -> None:
    key = ("unit-test", 1, "v")
    gfapi._mounts[key] = gfapi.GlusterMount("unit-test", 1, "v", 0)
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0 if not gfapi._mounts else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert key in gfapi._mounts  # the parent keeps its own
    finally:
        gfapi._mounts.pop(key, None)
