"""A run's records: log.txt, TensorBoard and costs.jsonl (rank 0 only), and what the terminal
shows (``verbosity``: quiet = nothing but warnings, info = start, epoch and summary lines,
debug = also every logged step)."""
import json
import os
import time

from utils.errors import is_disk_full
from utils.io import DiskFull, atomic_write_text, read_jsonl

VERBOSITY = ("quiet", "info", "debug")


def read_costs(path):
    """The per-epoch cost records of a costs.jsonl ([] when there is none); the record of an
    interrupted epoch ("partial") is bookkeeping for its resume, not an epoch."""
    return [r for r in read_jsonl(path) if not r.get("partial")]


def interrupted_cost(path, epoch):
    """The cost of the steps of ``epoch`` done before an interruption (None when there are
    none): a resume into the middle of that epoch adds it to the epoch's record."""
    part = [r for r in read_jsonl(path) if r.get("partial") and r["epoch"] == epoch]
    return part[-1] if part else None


def append_jsonl(path, record):
    """Append one record; a failed write (a full disk) leaves the file as it was."""
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        try:
            written = os.write(fd, data)
        except OSError as e:
            os.ftruncate(fd, size)
            raise DiskFull(path) if is_disk_full(e) else e
        if written != len(data):  # a short write: the disk filled up on the way
            os.ftruncate(fd, size)
            raise DiskFull(path)
    finally:
        os.close(fd)


def keep_costs_before(path, epoch):
    """On resume: drop records of epochs >= ``epoch`` (a kill after the record was written
    but before ckpt.pth moved on would otherwise count that epoch twice), partial ones too."""
    records = read_jsonl(path)
    kept = [r for r in records if r["epoch"] < epoch]
    if len(kept) != len(records):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def archive(path, stamp=None):
    """Move an earlier run's log file or folder aside under a dated name; returns the new
    name (None when there was nothing)."""
    if not os.path.exists(path):
        return None
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    root, ext = os.path.splitext(path) if os.path.isfile(path) else (path, "")
    new = f"{root}-{stamp}{ext}"
    n = 1
    while os.path.exists(new):
        n += 1
        new = f"{root}-{stamp}-{n}{ext}"
    os.replace(path, new)
    return new


class RunLog:
    """log.txt, TensorBoard and the terminal of one run; silent when ``enabled`` is false.

    A record that cannot be written (a full disk, a quota, a read-only folder) is said once on
    the terminal and dropped, and training goes on: log.txt and TensorBoard events are records
    of the run, not its state. If the disk is full the run's next checkpoint or cost record
    cannot be written either, and that write stops the run in one line (runners/train.py)."""

    def __init__(self, log_file, tb_dir, enabled, verbosity="info"):
        self.enabled = enabled
        self.verbosity = verbosity if enabled else "quiet"
        self.tb = self.log_file = None
        if enabled:
            os.makedirs(os.path.dirname(log_file), exist_ok=True)
            self.log_file = open(log_file, "a")
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(tb_dir)

    def _dropped(self, attr, what, err):
        """Stop writing ``what`` (the handle in attribute ``attr``) after ``err``, saying so
        once."""
        print(f"warning: {what} cannot be written ({err.strerror or err}); the run goes on "
              f"without it", flush=True)
        handle = getattr(self, attr)
        setattr(self, attr, None)
        try:
            handle.close()
        except OSError:
            pass

    def info(self, msg):
        """To log.txt only."""
        if self.log_file is not None:
            try:
                self.log_file.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")
                self.log_file.flush()
            except OSError as e:
                self._dropped("log_file", "log.txt", e)

    def say(self, msg, level="info"):
        """To log.txt and, at this verbosity, the terminal."""
        self.info(msg)
        if VERBOSITY.index(self.verbosity) >= VERBOSITY.index(level):
            print(msg, flush=True)

    def _tb(self, write):
        if self.tb is not None:
            try:
                write(self.tb)
            except OSError as e:
                self._dropped("tb", "TensorBoard events", e)

    def scalars(self, values, step):
        def write(tb):
            for k, v in values.items():
                tb.add_scalar(k, v, step)
        self._tb(write)

    def image(self, tag, image, step):
        """image: float [C, H, W] in [0, 1]."""
        self._tb(lambda tb: tb.add_image(tag, image, step))

    def close(self):
        self._tb(lambda tb: tb.close())
        if self.log_file is not None:
            try:
                self.log_file.close()
            except OSError:
                pass


def training_flops(flops_per_image, images):
    """The one FLOPs convention of every cost record and report: a forward pass's FLOPs as
    ``torch.utils.flop_counter.FlopCounterMode`` counts them (models.pruning.count_flops,
    attention included), and a backward pass costs two forward passes (3 in all), per training
    image."""
    return 3 * flops_per_image * images


def record_cost(record):
    """(wall-clock s, training FLOPs) of one costs.jsonl record; the online early-bird masks
    are part of the wall-clock, FLOPs count training steps only."""
    return record["wall_s"] + record.get("earlybird_s", 0.0), record.get("train_flops", 0)


def summed_cost(costs, upto=None):
    """(wall-clock s, training FLOPs) of a run's cost records of epochs <= ``upto`` (all)."""
    sel = [record_cost(c) for c in costs if upto is None or c["epoch"] <= upto]
    return sum(w for w, _ in sel), sum(f for _, f in sel)


def critical_and_total(pre_cost, ticket_costs, slots=None):
    """Cost of tickets trained after a shared prefix: (critical path, total). Tickets on a
    device of their own run side by side: the critical path is the prefix + the slowest one.
    ``slots`` (one per ticket, or None) name where each ran: tickets that shared a slot (a
    place on a GPU) ran one after another there, so a slot's path is the sum of its tickets."""
    slots = slots or [None] * len(ticket_costs)
    paths = {}
    for i, (slot, cost) in enumerate(zip(slots, ticket_costs)):
        key = ("own", i) if slot is None else ("slot", slot)
        paths[key] = paths.get(key, 0) + cost
    return pre_cost + max(paths.values()), pre_cost + sum(ticket_costs)
