"""Running TA-EB tickets: local processes (one group of GPUs each, extra tickets queue), or one
Slurm job per ticket. Each ticket is ``main.py`` fine-tuning one region; with more than one
process per ticket it runs under torchrun (DDP: NCCL on GPUs, gloo on the CPU)."""
import os
import shlex
import shutil
import string
import subprocess
import sys
import time

from core.runlog import read_costs
from utils.errors import UserError
from utils.io import atomic_write_json, atomic_write_text, read_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "main.py")


def ticket_command(main_args, nproc):
    """The command line of one ticket: python main.py ..., under torchrun when nproc > 1."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return launcher + [MAIN] + list(main_args)


def gpu_groups(gpus, per_ticket):
    """Split GPU ids into groups of ``per_ticket`` (a ticket runs on one group); GPUs left over
    are unused. No GPUs: [None] (the CPU)."""
    if not gpus:
        return [None]
    if per_ticket > len(gpus):
        raise UserError(f"--gpus_per_ticket {per_ticket}: only {len(gpus)} GPU(s) given")
    return [gpus[i:i + per_ticket] for i in range(0, len(gpus) - per_ticket + 1, per_ticket)]


def run_local(jobs, groups, *, k, threads, n_epochs, layout, poll_s, progress):
    """Run [(ticket job, command)] at most ``k`` at a time, each on a free slot of ``groups``
    (a group of GPUs; a group listed K times is shared by K tickets) or the CPU with
    ``threads`` threads per process. Returns (the jobs whose process failed, {run name: the
    slot index it ran on, None on the CPU})."""
    procs, failed, queue, bars, placement = {}, [], list(jobs), {}, {}
    free = list(range(len(groups))) if groups[0] is not None else [None] * k
    if progress and jobs:
        from tqdm import tqdm
        for i, (r, _) in enumerate(jobs):
            bars[id(r)] = tqdm(total=n_epochs, position=i, dynamic_ncols=True, disable=None,
                               desc=f"ticket [{r.region.lo},{r.region.hi}) "
                                    f"p={r.region.pruning_ratio:g}")
    while queue or procs:
        while queue and free and len(procs) < k:
            r, cmd = queue.pop(0)
            slot = free.pop(0)
            placement[r.run_doc] = slot
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, groups[slot])) \
                if slot is not None else ""
            os.makedirs(os.path.dirname(r.log_file), exist_ok=True)
            fh = open(r.log_file, "a")
            fh.write(f"$ CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} "
                     f"OMP_NUM_THREADS={threads} {shlex.join(cmd)}\n")
            fh.flush()
            procs[id(r)] = (subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                             cwd=os.getcwd()), r, fh, slot)
        time.sleep(poll_s)
        for key, (p, r, fh, slot) in list(procs.items()):
            if key in bars:
                bars[key].n = len(read_costs(layout.costs(r.run_doc)))
                bars[key].refresh()
            if p.poll() is not None:
                fh.close()
                del procs[key]
                free.append(slot)
                if p.returncode != 0:
                    failed.append(r)
    for b in bars.values():
        b.close()
    return failed, placement


# --- Slurm ------------------------------------------------------------------------------------

SBATCH_FIELDS = ("job_name", "log", "gpus", "cwd", "command")

DEFAULT_TEMPLATE = """#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --output={log}
#SBATCH --open-mode=append
#SBATCH --nodes=1
#SBATCH --ntasks=1
{resources}
set -euo pipefail
cd {cwd}
{command}
"""


def slurm_options(partition=None, time_limit=None, cpus=None, mem=None, account=None,
                  gpus=0):
    """#SBATCH lines for the resources given on the command line."""
    lines = [f"#SBATCH --gres=gpu:{gpus}"] if gpus else []
    for flag, value in (("partition", partition), ("time", time_limit),
                        ("cpus-per-task", cpus), ("mem", mem), ("account", account)):
        if value not in (None, ""):
            lines.append(f"#SBATCH --{flag}={value}")
    return "\n".join(lines)


def read_template(path):
    """A user's sbatch template: text with {job_name} {log} {gpus} {cwd} {command} fields."""
    if not os.path.isfile(path):
        raise UserError(f"--slurm_template {path}: file not found")
    with open(path) as f:
        text = f.read()
    names = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    unknown = names - set(SBATCH_FIELDS)
    if unknown:
        raise UserError(f"--slurm_template {path}: unknown field(s) "
                        f"{', '.join('{' + n + '}' for n in sorted(unknown))} (known: "
                        f"{', '.join('{' + n + '}' for n in SBATCH_FIELDS)})")
    if "command" not in names:
        raise UserError(f"--slurm_template {path}: has no {{command}} field")
    return text


def sbatch_script(cmd, *, job_name, log, latest, gpus, template=None, resources=""):
    """The script of one ticket. It resumes by itself when the ticket's ckpt.pth exists (a
    requeued or resubmitted job continues where it stopped)."""
    command = (f"RESUME=\nif [ -f {shlex.quote(latest)} ]; then RESUME=--resume_training; fi\n"
               f"{shlex.join(cmd)} $RESUME")
    fields = {"job_name": job_name, "log": log, "gpus": gpus,
              "cwd": shlex.quote(os.getcwd()), "command": command}
    if template is None:
        return DEFAULT_TEMPLATE.format(resources=resources, **fields)
    return template.format(**fields)


def _queued(job_ids):
    """Of ``job_ids``, those Slurm still has pending or running (needs squeue; none without)."""
    if not job_ids or shutil.which("squeue") is None:
        return set()
    res = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)],
                         capture_output=True, text=True)
    return set(res.stdout.split()) & set(job_ids) if res.returncode == 0 else set()


def submit_slurm(jobs, layout, doc, *, dry_run, script_for):
    """Write one sbatch script per unfinished ticket and submit it; returns 0, or 1 if sbatch
    failed. ``jobs``: [(ticket job, command)]; ``script_for(job, command)`` -> script text."""
    record_path = layout.slurm_jobs(doc)
    record = read_json(record_path, {})
    queued = _queued([j["job_id"] for j in record.values() if j.get("job_id")])
    if not dry_run and shutil.which("sbatch") is None:
        raise UserError("--launcher slurm: sbatch is not on PATH (use --dry_run to only write "
                        "the scripts)")
    rc = 0
    for r, cmd in jobs:
        name = r.run_doc
        prev = record.get(name, {}).get("job_id")
        if prev in queued:
            print(f"{name}: still queued or running as job {prev}; not resubmitted")
            continue
        path = layout.slurm_script(doc, r.region.range)
        atomic_write_text(path, script_for(r, cmd))
        if dry_run:
            print(f"{name}: wrote {path}; would run: sbatch --parsable {path}")
            continue
        res = subprocess.run(["sbatch", "--parsable", path], capture_output=True, text=True)
        if res.returncode != 0:
            msg = (res.stderr.strip() or res.stdout.strip()).splitlines()
            print(f"{name}: sbatch failed: {msg[-1] if msg else 'exit ' + str(res.returncode)}",
                  file=sys.stderr)
            rc = 1
            continue
        job_id = res.stdout.strip().splitlines()[-1].split(";")[0] if res.stdout.strip() else ""
        record[name] = {"job_id": job_id, "script": path, "log": r.log_file,
                        "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_json(record_path, record)
        print(f"{name}: submitted job {job_id} ({path})")
    return rc
