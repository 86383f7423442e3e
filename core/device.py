"""Device, precision and process-group set-up, and the RNG state a checkpoint carries."""
import contextlib
import os
from contextlib import nullcontext

import torch
import torch.distributed as dist

from utils.errors import UserError


def select_device(requested=None):
    """``requested`` ('cpu', 'cuda', 'cuda:1'), else CUDA (this rank's GPU) when there is one."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise UserError(f"--device {requested}: not a device name (cpu, cuda, cuda:N)")
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError(f"--device {requested}: this machine has no CUDA device")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise UserError(f"--device {requested}: only {torch.cuda.device_count()} "
                                f"CUDA device(s)")
        elif device.type != "cpu":
            raise UserError(f"--device {requested}: expected cpu or cuda[:N]")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def cpu_threads():
    """CPU threads this process may hand to its children: an ``OMP_NUM_THREADS`` it was started
    with (a caller's limit, e.g. for jobs run side by side), else the cores it may run on. More
    compute threads than cores make OpenMP spin against itself: a ticket took 20x longer per
    epoch with three 2-thread processes on 2 cores."""
    try:
        limit = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        limit = 0
    if limit > 0:
        return limit
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_device(device):
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def native_bf16(device):
    """Whether ``device`` runs bf16 natively (not emulated: pre-Ampere GPUs emulate it)."""
    if device.type != "cuda":
        return False
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no including_emulation: it never counted emulation
        return torch.cuda.is_bf16_supported()


def precision(cfg, device):
    """What fast.amp means on ``device``: 'bf16 autocast' | 'bf16 weights' (bf16 compute
    copy, fp32 master weights in the optimizer) | 'fp32'. auto: bf16 autocast on a GPU that
    runs bf16 natively, else fp32."""
    amp = cfg.fast.amp
    if amp == "bf16_weights":
        return "bf16 weights"
    if amp == "bf16" or (amp == "auto" and native_bf16(device)):
        return "bf16 autocast"
    return "fp32"


def autocast_for(cfg, device):
    """A zero-argument context factory: bf16 autocast when ``precision`` says so."""
    if precision(cfg, device) == "bf16 autocast":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


def use_channels_last(cfg, device):
    v = cfg.fast.channels_last
    return v == "on" or (v == "auto" and device.type == "cuda")


def dist_setup(device, timeout_s=600):
    """(rank, world size); joins the process group torchrun describes. A collective that waits
    longer than ``timeout_s`` (training.dist_timeout_s) fails instead of hanging, so a job
    whose peer died ends (torchrun also stops the other ranks when one exits)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        import datetime
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rng_state(device):
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def gather_rng_states(device, world):
    """Every rank's RNG state in rank order (a collective under torchrun: every rank calls it
    at the same point); one process: [its own]."""
    mine = rng_state(device)
    if world == 1:
        return [mine]
    out = [None] * world
    dist.all_gather_object(out, {k: v.cpu() for k, v in mine.items()})
    return out


def any_rank(flag, device, world):
    """Whether ``flag`` is true on any rank (a collective: every rank calls it at the same
    point, so all ranks act on one decision, e.g. a stop signal only some of them got)."""
    if world == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0],
                     device=device if device.type == "cuda" else torch.device("cpu"))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def restore_rng(ckpt, device, *, rank, world, seed, log=print):
    """Each rank's RNG streams as the checkpoint left them (``rng_ranks``: one state per rank,
    saved by a job of the same size), so a resumed torchrun job draws what the uninterrupted
    one would have. A checkpoint of another world size restores rank 0's streams exactly and
    seeds the others afresh (said in a note: not an exact continuation)."""
    states = ckpt.get("rng_ranks")
    if states and len(states) == world:
        set_rng_state(states[rank], device)
        return
    set_rng_state(ckpt["rng"], device)
    if world > 1:
        if rank > 0:
            torch.manual_seed(seed + 1000 * rank + ckpt.get("step", 0))
        elif log:
            log(f"note: the checkpoint was written by {len(states or [None])} process(es), "
                f"this job has {world}: ranks after the first draw new random streams (the "
                f"run continues, not exactly as it would have)")


def set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def training_rng_untouched(device):
    """Run work that may draw random numbers (building a network, masks, sample grids)
    without moving the training RNG streams: only the training step draws from them, so a
    resumed run continues exactly as an uninterrupted one."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
