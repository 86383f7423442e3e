"""What a training run leaves on disk around its epochs: a fresh start's clean-up, what a resume
reads, the command that continues a run, and the signal flag that saves a resumable checkpoint
on SIGTERM / SIGINT."""
import glob
import os
import signal
import time

from core import checkpoint as ck
from core.runlog import archive


class StopFlag:
    """SIGTERM / SIGINT set a flag; the loop saves a resumable checkpoint and exits."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *a):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False


def fresh_start(layout, doc):
    """--ni without --resume_training: earlier per-epoch results of this run are replaced; its
    log.txt and TensorBoard events are kept under a dated name, so the new ones start empty."""
    d = layout.run_dir(doc)
    for f in layout.checkpoint_files(doc):
        os.remove(f)
    for pattern in ("costs.jsonl", "stats.jsonl", "earlybird.json", "DONE"):
        for f in glob.glob(os.path.join(d, pattern)):
            os.remove(f)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    archive(layout.run_log(doc), stamp)
    archive(layout.tb_dir(doc), stamp)


def last_good(layout, doc):
    """What a resume reads now, in words."""
    path = layout.latest_checkpoint(doc)
    if not os.path.isfile(path):
        return "No checkpoint of this run was written."
    c = ck.load_checkpoint(path)
    return f"{path} (after epoch {c['epochs_done'] - 1}, step {c['step']}) is what " \
        f"--resume_training reads."


def resume_command(opts):
    """The command that continues this run: the one given, without --ni / --train_from_scratch,
    with --resume_training."""
    if not opts.command:
        return f"main.py --config ... --exp {opts.exp} --doc {opts.doc} --resume_training"
    drop = ("--ni", "--resume_training", "--train_from_scratch")
    args = [a for a in opts.command.split() if a not in drop]
    return " ".join(["python"] + args + ["--resume_training"])
