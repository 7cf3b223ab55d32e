"""Kernel uevents from netlink, without udev: the hotplug half of discovery.

Open the listener before coldplug so that devices appearing while coldplug
runs (USB storage, scsi disks found by an asynchronous host scan, their
partitions) are not missed; `poll` returns them as dicts."""
from __future__ import annotations

# _socket, not socket: socket.py pulls in enum, which costs at boot.
import _socket as socket
import select

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from liveinit.machine import Machine

NETLINK_KOBJECT_UEVENT = 15
KERNEL_GROUP = 1            # kernel broadcasts; udevd's re-broadcasts are group 2
RCVBUF = 1 << 21            # bursts at coldplug time are large


def parse(data: bytes) -> dict[str, str] | None:
    """`ACTION@DEVPATH\\0KEY=VALUE\\0...` -> {"ACTION":..., "DEVPATH":..., KEY: VALUE}.

    Returns None for messages that are not kernel uevents (libudev's "libudev\\0" header)."""
    parts = data.decode("utf-8", "replace").split("\0")
    head = parts[0]
    if "@" not in head:
        return None
    ev: dict[str, str] = {}
    for p in parts[1:]:
        k, sep, v = p.partition("=")
        if sep:
            ev[k] = v
    action, _, devpath = head.partition("@")
    ev.setdefault("ACTION", action)
    ev.setdefault("DEVPATH", devpath)
    return ev


class UeventListener:
    """An AF_NETLINK/NETLINK_KOBJECT_UEVENT socket bound to the kernel group."""

    def __init__(self, m: Machine | None = None) -> None:
        self.m = m
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                          NETLINK_KOBJECT_UEVENT)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except OSError:
            pass
        s.bind((0, KERNEL_GROUP))
        s.setblocking(False)
        self.sock = s

    def fileno(self) -> int:
        return self.sock.fileno()

    def poll(self, timeout: float) -> list[dict[str, str]]:
        """Events available within `timeout` seconds (all queued ones once one arrives)."""
        events: list[dict[str, str]] = []
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not r:
            return events
        while True:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ENOBUFS: we overflowed; the rescan that follows catches up
                break
            ev = parse(data)
            if ev is not None:
                events.append(ev)
        return events

    def close(self) -> None:
        self.sock.close()
