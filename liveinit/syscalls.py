"""The one module that makes syscalls (mkosi's sandbox.py style).

Python 3.11's `os` has no mount, umount2, pivot_root, finit_module or reboot,
so they are called through ctypes on the C library. Every failure becomes an
`OSError` naming the call and its arguments. Only this module imports ctypes;
everything else reaches it through `Machine.sys` (a `Linux` at boot, a
`tests.fakes.FakeSyscalls` in tests). Paths passed in are real paths (already
prefixed by `Machine.path`)."""
from __future__ import annotations

import ctypes
import os
import struct

# mount(2) flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_FORCE = 1
MNT_DETACH = 2

# reboot(2)
RB_AUTOBOOT = 0x01234567
RB_POWER_OFF = 0x4321FEDC
RB_HALT_SYSTEM = 0xCDEF0123

# x86_64 syscall numbers without a libc wrapper
SYS_PIVOT_ROOT = 155
SYS_INIT_MODULE = 175
SYS_FINIT_MODULE = 313

# loop(4) ioctls and flags
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_NAME_SIZE = 64
LO_KEY_SIZE = 32
LOOP_MAJOR = 7
# struct loop_info64: 7 x u64 (dev, inode, rdevice, offset, sizelimit), u32
# number, encrypt_type, encrypt_key_size, flags, file_name[64],
# crypt_name[64], encrypt_key[32], init[2] x u64 -> 232 bytes.
LOOP_INFO64 = struct.Struct("=QQQQQIIII64s64s32s2Q")
# struct loop_config: u32 fd, u32 block_size, loop_info64, u64 reserved[8] -> 304.
LOOP_CONFIG_SIZE = 304

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.syscall.restype = ctypes.c_long
_libc.reboot.argtypes = (ctypes.c_int,)
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def _check(result: int, call: str, *args: object) -> int:
    """Turn a -1 return into an OSError naming the call and its arguments."""
    if result < 0:
        err = ctypes.get_errno()
        shown = ", ".join(repr(a) for a in args)
        raise OSError(err, f"{call}({shown}): {os.strerror(err)}")
    return result


def makedev(major: int, minor: int) -> int:
    return os.makedev(major, minor)


def _ioctl_int(fd: int, request: int, arg: int, what: str) -> int:
    return _check(_libc.ioctl(fd, request, ctypes.c_void_p(arg)), "ioctl", what, arg)


class Linux:
    """The real syscalls."""

    def __init__(self) -> None:
        # Open loop fds (O_CLOEXEC): with LO_FLAGS_AUTOCLEAR the kernel detaches
        # a loop device on its last close, so each is held until mounted and
        # let go by exec (or `loop_release`).
        self.held: dict[str, int] = {}

    def mount(self, source: str, target: str, fstype: str | None = None,
              flags: int = 0, data: str | None = None) -> None:
        _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
               "mount", source, target, fstype, hex(flags), data)

    def umount2(self, target: str, flags: int = 0) -> None:
        _check(_libc.umount2(_b(target), flags), "umount2", target, flags)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        _check(_libc.syscall(ctypes.c_long(SYS_PIVOT_ROOT), ctypes.c_char_p(_b(new_root)),
                             ctypes.c_char_p(_b(put_old))),
               "pivot_root", new_root, put_old)

    def chroot(self, path: str) -> None:
        os.chroot(path)

    def chdir(self, path: str) -> None:
        os.chdir(path)

    def finit_module(self, fd: int, params: str = "", flags: int = 0) -> bool:
        """Load a module from an open .ko file. False when already loaded (EEXIST)."""
        r = _libc.syscall(ctypes.c_long(SYS_FINIT_MODULE), ctypes.c_int(fd),
                          ctypes.c_char_p(params.encode()), ctypes.c_int(flags))
        if r < 0 and ctypes.get_errno() == 17:
            return False
        _check(r, "finit_module", fd, params, flags)
        return True

    def init_module(self, image: bytes, params: str = "") -> bool:
        """Load a module from memory (decompressed .ko.xz/.zst). False on EEXIST."""
        buf = ctypes.create_string_buffer(image, len(image))
        r = _libc.syscall(ctypes.c_long(SYS_INIT_MODULE), buf, ctypes.c_ulong(len(image)),
                          ctypes.c_char_p(params.encode()))
        if r < 0 and ctypes.get_errno() == 17:
            return False
        _check(r, "init_module", f"<{len(image)} bytes>", params)
        return True

    def mknod(self, path: str, kind: str, major: int, minor: int, mode: int = 0o600) -> None:
        """Create a device node; kind is "b" or "c". An existing node is kept."""
        import stat
        fmt = stat.S_IFBLK if kind == "b" else stat.S_IFCHR
        try:
            os.mknod(path, fmt | mode, os.makedev(major, minor))
        except FileExistsError:
            pass

    def reboot(self, cmd: int = RB_POWER_OFF) -> None:
        os.sync()
        _check(_libc.reboot(cmd), "reboot", hex(cmd))

    def execv(self, path: str, argv: list[str]) -> None:
        os.execv(path, argv)

    def st_dev(self, path: str) -> int:
        return os.lstat(path).st_dev

    def console(self, path: str) -> None:
        """Make `path` (/dev/console) stdin, stdout and stderr."""
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        for n in (0, 1, 2):
            if fd != n:
                os.dup2(fd, n)
        if fd > 2:
            os.close(fd)

    def loop_attach(self, path: str, readonly: bool = True, autoclear: bool = True,
                    dev: str = "/dev", offset: int = 0, sizelimit: int = 0) -> str:
        """Attach `path` (from byte `offset`, `sizelimit` bytes of it; 0: to its end)
        to a free loop device and return the device path."""
        flags = (LO_FLAGS_READ_ONLY if readonly else 0) | (LO_FLAGS_AUTOCLEAR if autoclear else 0)
        ffd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        try:
            ctl = os.open(dev + "/loop-control", os.O_RDWR | os.O_CLOEXEC)
            try:
                n = _ioctl_int(ctl, LOOP_CTL_GET_FREE, 0, "LOOP_CTL_GET_FREE")
            finally:
                os.close(ctl)
            loopdev = f"{dev}/loop{n}"
            if not os.path.exists(loopdev):  # devtmpfs may not have made it yet
                self.mknod(loopdev, "b", LOOP_MAJOR, n, 0o660)
            lfd = os.open(loopdev, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except BaseException:
            os.close(ffd)
            raise
        ok = False
        try:
            name = os.fsencode(path)[-LO_NAME_SIZE + 1:]
            info = LOOP_INFO64.pack(0, 0, 0, offset, sizelimit, 0, 0, 0, flags, name, b"", b"", 0, 0)
            cfg = struct.pack("=II", ffd, 0) + info
            cfg += bytes(LOOP_CONFIG_SIZE - len(cfg))
            buf = ctypes.create_string_buffer(cfg, LOOP_CONFIG_SIZE)
            r = _libc.ioctl(lfd, LOOP_CONFIGURE, buf)
            if r < 0:
                err = ctypes.get_errno()
                if err not in (22, 25):  # EINVAL/ENOTTY: kernel < 5.8
                    _check(r, "ioctl", loopdev, "LOOP_CONFIGURE", path)
                _ioctl_int(lfd, LOOP_SET_FD, ffd, f"{loopdev} LOOP_SET_FD {path}")
                ibuf = ctypes.create_string_buffer(info, len(info))
                r = _libc.ioctl(lfd, LOOP_SET_STATUS64, ibuf)
                if r < 0:
                    err = ctypes.get_errno()
                    _libc.ioctl(lfd, LOOP_CLR_FD, None)
                    ctypes.set_errno(err)
                    _check(r, "ioctl", loopdev, "LOOP_SET_STATUS64", path)
            ok = True
        finally:
            os.close(ffd)
            if ok:
                self.held[loopdev] = lfd
            else:
                os.close(lfd)
        return loopdev

    def loop_release(self, loopdev: str | None = None) -> None:
        """Let go of held loop fds (all, or one): unmounted autoclear devices detach."""
        for dev in [loopdev] if loopdev else list(self.held):
            fd = self.held.pop(dev, None)
            if fd is not None:
                os.close(fd)
