"""Drive libvirt's real ``lockd`` lock-manager plugin (lockd.so) through ctypes, without libvirtd.

Not a fake: this calls the same plugin entry points libvirt's domain_lock.c calls (virLockDriverImpl:
drvInit, drvNew, drvAddResource, drvAcquire, drvRelease, drvFree; ABI from libvirt's lock_driver.h),
so the bytes on the socket are exactly the plugin's. It lives in tests/fakes because that is the tests'
importable helper package.

As root the plugin always connects to /run/libvirt/virtlockd-sock; callers that must not touch the
host's socket run inside a private mount namespace with a tmpfs on /run/libvirt.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

LOCKD_SO = "/usr/lib/x86_64-linux-gnu/libvirt/lock-driver/lockd.so"
LIBVIRT_SO = "libvirt.so.0"
VIR_LOCK_MANAGER_VERSION = 1_000_000
OBJECT_TYPE_DOMAIN = 0
RESOURCE_TYPE_DISK, RESOURCE_TYPE_LEASE = 0, 1
RESOURCE_READONLY, RESOURCE_SHARED = 1, 2
ACQUIRE_REGISTER_ONLY, ACQUIRE_RESTRICT = 1, 2
PARAM_STRING, PARAM_CSTRING, PARAM_UINT, PARAM_ULONG, PARAM_UUID = 0, 1, 4, 5, 7


class _ParamValue(ctypes.Union):
    _fields_ = [("iv", ctypes.c_int), ("ui", ctypes.c_uint), ("ul", ctypes.c_ulonglong),
                ("str", ctypes.c_char_p), ("uuid", ctypes.c_ubyte * 16)]


class _Param(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("key", ctypes.c_char_p), ("value", _ParamValue)]


class _Manager(ctypes.Structure):
    _fields_ = [("driver", ctypes.c_void_p), ("privateData", ctypes.c_void_p)]


_MANAGER_P = ctypes.POINTER(_Manager)
_PARAM_P = ctypes.POINTER(_Param)


class _Driver(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint), ("flags", ctypes.c_uint),
        ("drvInit", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint, ctypes.c_char_p, ctypes.c_uint)),
        ("drvDeinit", ctypes.CFUNCTYPE(ctypes.c_int)),
        ("drvNew", ctypes.CFUNCTYPE(ctypes.c_int, _MANAGER_P, ctypes.c_uint, ctypes.c_size_t, _PARAM_P,
                                    ctypes.c_uint)),
        ("drvFree", ctypes.CFUNCTYPE(None, _MANAGER_P)),
        ("drvAddResource", ctypes.CFUNCTYPE(ctypes.c_int, _MANAGER_P, ctypes.c_uint, ctypes.c_char_p,
                                            ctypes.c_size_t, _PARAM_P, ctypes.c_uint)),
        ("drvAcquire", ctypes.CFUNCTYPE(ctypes.c_int, _MANAGER_P, ctypes.c_char_p, ctypes.c_uint, ctypes.c_int,
                                        ctypes.POINTER(ctypes.c_int))),
        ("drvRelease", ctypes.CFUNCTYPE(ctypes.c_int, _MANAGER_P, ctypes.POINTER(ctypes.c_char_p), ctypes.c_uint)),
        ("drvInquire", ctypes.c_void_p),
    ]


class PluginError(Exception):
    """The plugin returned -1; ``code`` and ``message`` are libvirt's last error, as virsh would show it."""

    def __init__(self, call: str, code: int, message: str) -> None:
        super().__init__(f"{call}: error {code}: {message}")
        self.call = call
        self.code = code
        self.message = message


@dataclass(frozen=True)
class DomainIdentity:
    name: str
    uuid: bytes
    id: int
    pid: int


class LockPlugin:
    """lockd.so loaded and initialised with ``config_path`` (a qemu-lockd.conf)."""

    def __init__(self, config_path: str) -> None:
        self._libvirt = ctypes.CDLL(LIBVIRT_SO)
        self._libvirt.virGetLastErrorMessage.restype = ctypes.c_char_p
        self._libvirt.virGetLastErrorCode.restype = ctypes.c_int
        if self._libvirt.virInitialize() < 0:
            raise self._error("virInitialize")
        plugin = ctypes.CDLL(LOCKD_SO)
        self._driver = _Driver.in_dll(plugin, "virLockDriverImpl")
        self._plugin = plugin
        if self._driver.drvInit(VIR_LOCK_MANAGER_VERSION, config_path.encode(), 0) < 0:
            raise self._error("drvInit")

    def domain(self, identity: DomainIdentity) -> PluginDomain:
        return PluginDomain(self, identity)

    def _error(self, call: str) -> PluginError:
        message = self._libvirt.virGetLastErrorMessage()
        return PluginError(call, self._libvirt.virGetLastErrorCode(), (message or b"").decode())


class PluginDomain:
    """One virLockManager for a domain, as virDomainLockManagerNew builds it."""

    def __init__(self, plugin: LockPlugin, identity: DomainIdentity) -> None:
        self._plugin = plugin
        self._driver = plugin._driver
        self._manager = _Manager(driver=ctypes.addressof(self._driver))
        self._keep: list[object] = []
        params = (_Param * 5)()
        params[0].type, params[0].key = PARAM_UUID, b"uuid"
        params[0].value.uuid[:] = list(identity.uuid)
        params[1].type, params[1].key, params[1].value.str = PARAM_STRING, b"name", identity.name.encode()
        params[2].type, params[2].key, params[2].value.ui = PARAM_UINT, b"id", identity.id
        params[3].type, params[3].key, params[3].value.ui = PARAM_UINT, b"pid", identity.pid
        params[4].type, params[4].key, params[4].value.str = PARAM_CSTRING, b"uri", b"qemu:///system"
        self._keep.append(params)
        if self._driver.drvNew(ctypes.byref(self._manager), OBJECT_TYPE_DOMAIN, 5, params, 0) < 0:
            raise plugin._error("drvNew")

    def add_lease(self, key: str, *, path: str, lockspace: str, offset: int = 0) -> None:
        """``<lease><lockspace>lockspace</lockspace><key>key</key><target path='path'/></lease>``."""
        params = (_Param * 3)()
        params[0].type, params[0].key, params[0].value.str = PARAM_STRING, b"path", path.encode()
        params[1].type, params[1].key, params[1].value.ul = PARAM_ULONG, b"offset", offset
        params[2].type, params[2].key, params[2].value.str = PARAM_STRING, b"lockspace", lockspace.encode()
        self._keep.append(params)
        if self._driver.drvAddResource(ctypes.byref(self._manager), RESOURCE_TYPE_LEASE, key.encode(), 3,
                                       params, 0) < 0:
            raise self._plugin._error("drvAddResource")

    def add_disk(self, path: str, *, shared: bool = False, readonly: bool = False) -> None:
        flags = (RESOURCE_SHARED if shared else 0) | (RESOURCE_READONLY if readonly else 0)
        if self._driver.drvAddResource(ctypes.byref(self._manager), RESOURCE_TYPE_DISK, path.encode(), 0,
                                       None, flags) < 0:
            raise self._plugin._error("drvAddResource")

    def acquire(self, flags: int = 0) -> int:
        """Returns the fd the plugin leaves open for REGISTER_ONLY|RESTRICT (QEMU's connection), else -1."""
        fd = ctypes.c_int(-1)
        if self._driver.drvAcquire(ctypes.byref(self._manager), None, flags, 0, ctypes.byref(fd)) < 0:
            raise self._plugin._error("drvAcquire")
        return fd.value

    def release(self) -> None:
        if self._driver.drvRelease(ctypes.byref(self._manager), None, 0) < 0:
            raise self._plugin._error("drvRelease")

    def free(self) -> None:
        self._driver.drvFree(ctypes.byref(self._manager))
