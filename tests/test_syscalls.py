"""The ctypes syscalls against the real kernel of the host: errno becomes an
OSError naming the call, and a loop device really carries a squashfs
(LOOP_CONFIGURE and the LOOP_SET_FD + LOOP_SET_STATUS64 fallback)."""
from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from liveinit import syscalls
from liveinit.syscalls import MS_RDONLY, Linux


def test_errno_becomes_an_oserror_naming_the_call(tmp_path: Path) -> None:
    with pytest.raises(OSError) as exc:
        Linux().mount("none", str(tmp_path / "missing"), "tmpfs", 0, "size=1m")
    assert exc.value.errno == errno.ENOENT
    call = f"mount('none', '{tmp_path}/missing', 'tmpfs', '0x0', 'size=1m')"
    assert str(exc.value) == f"[Errno 2] {call}: No such file or directory"


def test_umount_of_a_non_mount_point(tmp_path: Path) -> None:
    with pytest.raises(OSError) as exc:
        Linux().umount2(str(tmp_path), 0)
    assert exc.value.errno == errno.EINVAL and "umount2(" in str(exc.value)


def test_loop_info_layout() -> None:
    assert syscalls.LOOP_INFO64.size == 232
    assert 8 + syscalls.LOOP_INFO64.size + 64 == syscalls.LOOP_CONFIG_SIZE == 304


def squashfs(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    (src / "hello").write_text("from the image\n")
    img = tmp / "img.sfs"
    subprocess.run(["mksquashfs", str(src), str(img), "-noappend", "-quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    return img


def attach_mount_read(tmp: Path, lx: Linux) -> None:
    img = squashfs(tmp)
    loop = lx.loop_attach(str(img))
    name = os.path.basename(loop)
    try:
        sysfs = Path(f"/sys/block/{name}")
        assert (sysfs / "loop" / "backing_file").read_text().strip() == str(img)
        assert (sysfs / "ro").read_text().strip() == "1"
        assert (sysfs / "loop" / "autoclear").read_text().strip() == "1"
        mnt = tmp / "mnt"
        mnt.mkdir()
        lx.mount(loop, str(mnt), "squashfs", MS_RDONLY)
        try:
            assert (mnt / "hello").read_text() == "from the image\n"
        finally:
            lx.umount2(str(mnt), 0)
    finally:
        lx.loop_release(loop)
    # autoclear: unmounted and released, the device lets go of the file
    assert not (Path(f"/sys/block/{name}") / "loop" / "backing_file").exists()


@pytest.mark.root
def test_loop_configure_and_mount(tmp_path: Path) -> None:
    attach_mount_read(tmp_path, Linux())


@pytest.mark.root
def test_loop_set_fd_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An ioctl number the loop driver does not know: ENOTTY/EINVAL as on kernels < 5.8.
    monkeypatch.setattr(syscalls, "LOOP_CONFIGURE", 0x4CFF)
    attach_mount_read(tmp_path, Linux())


def test_loop_attach_missing_file(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        Linux().loop_attach(str(tmp_path / "nope.img"))


@pytest.mark.root
@pytest.mark.parametrize("configure", [True, False])
def test_loop_over_a_byte_range_writes_only_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  configure: bool) -> None:
    # the persistence image on a FAT stick: a loop over its bytes of the partition
    if not configure:
        monkeypatch.setattr(syscalls, "LOOP_CONFIGURE", 0x4CFF)
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"A" * 8192 + b"B" * 16384 + b"C" * 8192)
    lx = Linux()
    loop = lx.loop_attach(str(disk), readonly=False, offset=8192, sizelimit=16384)
    try:
        name = os.path.basename(loop)
        assert (Path(f"/sys/block/{name}") / "loop" / "offset").read_text().strip() == "8192"
        assert int((Path(f"/sys/block/{name}") / "size").read_text()) * 512 == 16384
        with open(loop, "r+b") as f:
            assert f.read() == b"B" * 16384
            f.seek(0)
            f.write(b"x" * 16384)
            f.flush()
            os.fsync(f.fileno())
    finally:
        lx.loop_release(loop)
    assert disk.read_bytes() == b"A" * 8192 + b"x" * 16384 + b"C" * 8192
