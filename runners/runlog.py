"""A run's records: log.txt, TensorBoard scalars and costs.jsonl (rank 0 only)."""
import json
import os
import time

from utils.io import atomic_write_text, read_jsonl


def read_costs(path):
    """The per-epoch cost records of a costs.jsonl ([] when there is none)."""
    return read_jsonl(path)


def append_jsonl(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def keep_costs_before(path, epoch):
    """On resume: drop records of epochs >= ``epoch`` (a kill after the record was written
    but before ckpt.pth moved on would otherwise count that epoch twice)."""
    records = read_jsonl(path)
    kept = [r for r in records if r["epoch"] < epoch]
    if len(kept) != len(records):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class RunLog:
    """log.txt and TensorBoard of one run; does nothing when ``enabled`` is false."""

    def __init__(self, log_file, tb_dir, enabled):
        self.enabled = enabled
        self.tb = None
        if enabled:
            os.makedirs(os.path.dirname(log_file), exist_ok=True)
            self.log_file = open(log_file, "a")
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(tb_dir)

    def info(self, msg):
        if self.enabled:
            self.log_file.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")
            self.log_file.flush()

    def scalars(self, values, step):
        if self.enabled:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self):
        if self.enabled:
            self.tb.close()
            self.log_file.close()
