"""One process at a time per run: a lock file that a run directory (training run, ticket set,
sample folder, pipeline) holds for as long as a process works in it.

A second process refuses in one line naming the first (pid, host, start time). A lock left by
a process that no longer runs on this host is taken over, with a line saying so. Under torchrun
the job holds the lock through its rank 0 (``hold_for_job``), so its other ranks do not refuse
their own job.
"""
import json
import os
import socket
import time

from utils.errors import UserError


def _alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True  # someone else's process, or an unreadable pid: assume it runs
    return True


def _read(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class RunLock:
    """``with RunLock(path, what):`` holds ``path`` (created exclusively) for the block."""

    def __init__(self, path, what, log=print):
        self.path, self.what, self.log = path, what, log
        self.held = False

    def acquire(self):
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "start": time.strftime("%Y-%m-%d %H:%M:%S"), "what": self.what}
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_or_refuse(me["host"])
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise UserError(f"{self.what}: could not take the lock {self.path}")

    def _take_over_or_refuse(self, host):
        other = _read(self.path)
        if other is None:  # being written this instant, or damaged: look again once
            time.sleep(0.2)
            other = _read(self.path)
        if other and other.get("host") == host and not _alive(other.get("pid")):
            self.log(f"note: {self.what}: taking over the lock of process {other.get('pid')} "
                     f"(started {other.get('start')}), which is no longer running")
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            return
        who = (f"process {other.get('pid')} on {other.get('host')} since {other.get('start')}"
               if other else "another process")
        raise UserError(f"{self.what} is in use by {who} ({self.path}); wait for it to end, or "
                        f"delete that file if the process is gone")

    def release(self):
        if self.held:
            self.held = False
            if (_read(self.path) or {}).get("pid") == os.getpid():
                os.remove(self.path)

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
