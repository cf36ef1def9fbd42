"""One driver per sweep: an exclusive lock on STORAGE/NAME/driver.lock for the driver's life.

flock(2), not a PID file: the kernel drops the lock when its process dies (SIGKILL included), so a
dead driver's lock is simply taken over, with no staleness check to get wrong. On NFS, Linux
clients emulate flock with POSIX byte-range locks (NFSv4 locks, or lockd on v3), so drivers on
different hosts exclude each other too; a Lustre store needs its `flock` mount option. The lock
file holds the holder's host and PID, only to name it in the message of the driver turned away.
"""
import fcntl
import os
import socket
from pathlib import Path

LOCK_FILE = "driver.lock"


class LockedError(Exception):
    """Another live driver holds the sweep."""


_held = {}  # sweep folder -> fd of its lock, held by this process


def acquire(root: Path):
    """Lock `root` for this process (until it exits); raises LockedError naming the holder."""
    if root in _held:  # a second sweep run in this process (flock would refuse our own second fd)
        return _held[root]
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown host and PID"
        os.close(fd)
        raise LockedError(f"sweep {root.name!r} at {root.parent} is being run by another driver ({holder}); "
                          f"wait for it to end, or use --name NEW") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"host {socket.gethostname()} PID {os.getpid()}\n".encode(), 0)
    _held[root] = fd
    return fd  # kept open (not inherited by children: Python's fds are close-on-exec) until exit
