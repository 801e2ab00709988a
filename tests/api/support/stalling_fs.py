#!/usr/bin/python3
"""A pass-through FUSE file system whose disk can be made to stall.

Usage: stalling_fs.py ROOT MOUNTPOINT SWITCH

Mirrors ROOT at MOUNTPOINT. While the file SWITCH exists, every read,
write, sync and file creation waits (as on a disk that stopped answering)
until SWITCH is removed; metadata (stat, statfs, directory listings) still
answers, as a kernel's caches would. The file SWITCH.on exists exactly
while the stall is in force, so a test knows when it has begun. Used by the disk-stall test
(tests/api/disk.rs) to freeze the server's data directory for real.
"""

import errno
import os
import sys
import threading
import time

import fusepy
from fusepy import FUSE, FuseOSError, Operations

POLL_SECONDS = 0.01


class Stall:
    """Whether the disk answers: polled from the switch file's presence."""

    def __init__(self, switch):
        self.switch = switch
        self.answering = threading.Event()
        self.answering.set()
        threading.Thread(target=self.poll, daemon=True).start()

    def poll(self):
        on = self.switch + ".on"
        while True:
            if os.path.exists(self.switch):
                if self.answering.is_set():
                    self.answering.clear()
                    open(on, "w").close()
            elif not self.answering.is_set():
                if os.path.exists(on):
                    os.unlink(on)
                self.answering.set()
            time.sleep(POLL_SECONDS)

    def wait(self):
        self.answering.wait()


class Passthrough(Operations):
    def __init__(self, root, stall):
        self.root = root
        self.stall = stall

    def real(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def access(self, path, mode):
        if not os.access(self.real(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        return os.chmod(self.real(path), mode)

    def chown(self, path, uid, gid):
        return os.chown(self.real(path), uid, gid)

    def getattr(self, path, fh=None):
        st = os.lstat(self.real(path))
        return {
            key: getattr(st, key)
            for key in (
                "st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime",
                "st_nlink", "st_size", "st_uid", "st_blocks",
            )
        }

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self.real(path))

    def mkdir(self, path, mode):
        return os.mkdir(self.real(path), mode)

    def rmdir(self, path):
        return os.rmdir(self.real(path))

    def statfs(self, path):
        st = os.statvfs(self.real(path))
        return {
            key: getattr(st, key)
            for key in (
                "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax",
            )
        }

    def unlink(self, path):
        self.stall.wait()
        return os.unlink(self.real(path))

    def rename(self, old, new):
        self.stall.wait()
        return os.rename(self.real(old), self.real(new))

    def utimens(self, path, times=None):
        return os.utime(self.real(path), times)

    def open(self, path, flags):
        self.stall.wait()
        return os.open(self.real(path), flags)

    def create(self, path, mode, fi=None):
        self.stall.wait()
        return os.open(self.real(path), os.O_WRONLY | os.O_CREAT, mode)

    def read(self, path, length, offset, fh):
        self.stall.wait()
        return os.pread(fh, length, offset)

    def write(self, path, buf, offset, fh):
        self.stall.wait()
        return os.pwrite(fh, buf, offset)

    def truncate(self, path, length, fh=None):
        self.stall.wait()
        with open(self.real(path), "r+") as f:
            f.truncate(length)

    def flush(self, path, fh):
        self.stall.wait()
        return 0

    def release(self, path, fh):
        return os.close(fh)

    def fsync(self, path, datasync, fh):
        self.stall.wait()
        return os.fsync(fh)

    def fallocate(self, path, mode, offset, length, fh):
        self.stall.wait()
        os.posix_fallocate(fh, offset, length)
        return 0


def main():
    root, mountpoint, switch = sys.argv[1:4]
    FUSE(
        Passthrough(root, Stall(switch)),
        mountpoint,
        foreground=True,
        nothreads=False,
        allow_other=False,
    )


if __name__ == "__main__":
    main()
