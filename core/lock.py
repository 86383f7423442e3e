"""One process at a time per run: a lock file that a run directory (training run, ticket set,
sample folder, pipeline) holds for as long as a process works in it.

A second process refuses in one line naming the first (pid, host, start time). The holder keeps
an exclusive ``flock`` on the file, which the kernel drops when the process dies however it dies:
a lock left by a dead process on this host is taken over (with a line saying so) by exactly one
of the processes that find it, never by two. A lock naming another host (a shared file system,
where flock may not reach across machines) is not taken over. Under torchrun the job holds the
lock through its rank 0 (``hold_for_job``), so its other ranks do not refuse their own job.
"""
import fcntl
import json
import os
import socket
import time

from utils.errors import UserError


def _read(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class RunLock:
    """``with RunLock(path, what):`` holds ``path`` (flock, exclusive) for the block."""

    def __init__(self, path, what, log=print):
        self.path, self.what, self.log = path, what, log
        self.held, self.fd = False, None

    def acquire(self):
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "start": time.strftime("%Y-%m-%d %H:%M:%S"), "what": self.what}
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        for _ in range(5):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._refuse(_read(self.path))
            if not self._same_file(fd):  # the holder released (removed) it meanwhile: again
                os.close(fd)
                continue
            other = _read(self.path)
            if other and other.get("host") != me["host"]:
                os.close(fd)
                self._refuse(other)
            if other and other.get("pid") != me["pid"]:
                self.log(f"note: {self.what}: taking over the lock of process "
                         f"{other.get('pid')} (started {other.get('start')}), which is no "
                         f"longer running")
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            self.fd, self.held = fd, True
            return self
        raise UserError(f"{self.what}: could not take the lock {self.path}")

    def _same_file(self, fd):
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def check(self):
        """Raise (one line) when the lock file is no longer the one this process holds: the
        folder was removed, or another process took a new lock there meanwhile."""
        if self.held and not self._same_file(self.fd):
            raise UserError(f"{self.what}: its lock {self.path} was removed or replaced while "
                            f"this process ran (the folder deleted, another run started "
                            f"there); this process stops without writing into it")

    def _refuse(self, other):
        who = (f"process {other.get('pid')} on {other.get('host')} since {other.get('start')}"
               if other else "another process")
        raise UserError(f"{self.what} is in use by {who} ({self.path}); wait for it to end, or "
                        f"delete that file if the process is gone")

    def release(self):
        if self.held:
            self.held = False
            if self._same_file(self.fd):
                os.remove(self.path)  # while still holding it: nobody takes a removed file
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def hold_for_job(path, what, *, rank, world, device, log=print):
    """The job's lock: rank 0 takes it and tells the others whether it could; every rank
    raises the same refusal. Returns the RunLock (held by rank 0 only)."""
    lock = RunLock(path, what, log=log)
    error = None
    if rank == 0:
        try:
            lock.acquire()
        except UserError as e:
            error = e
    if world > 1:
        import torch
        import torch.distributed as dist
        flag = torch.tensor([0.0 if error is None else 1.0], device=device)
        dist.broadcast(flag, 0)
        if flag.item() and error is None:
            error = UserError(f"{what} is in use by another process ({path})")
    if error is not None:
        raise error
    return lock
