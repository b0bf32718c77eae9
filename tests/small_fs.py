"""File systems of the test's own, to make full or read-only (we run as root in CI;
elsewhere the tests that need them are skipped, saying why).

A small tmpfs to fill: ``fill`` takes every free byte with a file of its own; removing that
file gives the space back, as an operator cleaning up would. An ext4 image on a loop device
to make read-only the way the kernel does on disk errors (a file system with files open for
writing cannot be remounted read-only by hand: "mount point is busy").
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_tmpfs(where: Path, size: str = "2m") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``where`` (created); unmount it on the way out."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a {size} tmpfs to fill (needs root or CAP_SYS_ADMIN): "
            f"{mounted.stderr.strip() or mounted.returncode}"
        )
    try:
        yield where
    finally:
        # Lazy: a connection a failed test left open must not keep the mount (and fail
        # the cleanup of tmp_path).
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(where: Path) -> Path:
    """Take all the free space of ``where``'s file system; the filler file's path."""
    filler = where / "filler"
    chunk = b"\0" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        for size in (4096, 512, 1):  # the last bits too
            while True:
                try:
                    os.write(fd, chunk[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


@contextmanager
def ext4_image(where: Path, size: str = "16M") -> Iterator[tuple[Path, str]]:
    """An ext4 file system in a file under ``where``, on a loop device of its own, mounted
    ``errors=remount-ro`` at ``where/mnt``: (mount point, loop device name). Skipped,
    saying why, where loop devices or mounting are not allowed."""
    image, mnt = where / "fs.img", where / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(
        f"truncate -s {size} {image} && mkfs.ext4 -q {image}",
        shell=True,
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot make an ext4 image: {made.stderr.strip()}")
    attached = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=False
    )
    if attached.returncode != 0:
        pytest.skip(f"cannot attach a loop device (needs root): {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        mounted = subprocess.run(
            ["mount", "-o", "errors=remount-ro", device, str(mnt)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount {device}: {mounted.stderr.strip()}")
        try:
            yield mnt, Path(device).name
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


def make_read_only(device: str) -> None:
    """Have the kernel turn the ext4 file system on loop device ``device`` read-only, as
    it does on an I/O error (``errors=remount-ro``): ext4's own test switch. Only ever a
    loop device this module attached: never the machine's disk."""
    assert re.fullmatch(r"loop[0-9]+", device), device
    Path(f"/sys/fs/ext4/{device}/trigger_fs_error").write_text("smsc test: read-only\n")


def mount_again(mnt: Path, device: str) -> None:
    """Unmount the file system at ``mnt`` and mount loop device ``device`` there again
    (read-write, as an operator does once the cause is fixed)."""
    subprocess.run(["umount", str(mnt)], check=True)
    subprocess.run(["mount", f"/dev/{device}", str(mnt)], check=True)
