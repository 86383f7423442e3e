"""The training loop (docs/design.md, steps 1, 4, 5): dense training, EB-ticket fine-tuning and
region-restricted TA-EB ticket fine-tuning are the same loop on different networks.

Read in order: ``build_run`` decides which network and from where (resume > pruned ticket >
restore > scratch); ``train`` runs the epochs; ``run_epoch`` runs the steps of one epoch;
``end_epoch`` (runners/epoch_end.py) does the work after it (checkpoints, cost record, online
early-bird masks, sample grid); where the network comes from is runners/source.py's. Per step (``train_step``): draw t, loss, backward, clip, step, EMA. Scalars reach the
host only every ``training.log_every`` steps. Only the training step draws from the training
RNG streams: everything else runs under ``training_rng_untouched``, so resume is exact.
"""
import signal
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from tqdm import tqdm

from datasets import BatchStream, get_dataset
from models.diffusion import Diffusion, alphas_cumprod_f64
from models.ema import EMA
from models.resample import make_timestep_sampler
from core import checkpoint as ck
from core import ckpt_policy as policy
from core.config import dump_config
from core.device import (any_rank, autocast_for, configure_device, dist_setup,
                         gather_rng_states, precision, restore_rng, select_device,
                         training_rng_untouched, use_channels_last)
from core.layout import Layout
from core.lock import hold_for_job
from core.runlog import RunLog, interrupted_cost, keep_costs_before
from runners.epoch_end import end_epoch, save_interrupted, summary
from runners.optim import lr_at, make_optimizer
from runners.run_files import StopFlag, fresh_start, last_good, resume_command
from runners.source import Source, network_costs, resolve_source
from runners.step import Diverged, MasterWeights, NonFinite, QuartileLoss, train_step
from utils.errors import UserError, write_refused
from utils.io import atomic_write_text


@dataclass
class RunState:
    model: torch.nn.Module               # the bare network (checkpoints, EMA, clipping)
    train_model: torch.nn.Module         # the same, wrapped for DDP / compile
    ema: Optional[EMA]
    optimizer: Any
    source: Source
    ts_range: tuple
    start_epoch: int = 0
    step: int = 0
    start_step_in_epoch: int = 0
    carried_cost: Optional[dict] = None  # the interrupted part of epoch start_epoch
    master: Any = None                   # MasterWeights under fast.amp: bf16_weights
    nonfinite: Any = None                # NonFinite: steps with a non-finite loss / gradient
    skipped_before: int = 0              # of them, those counted in earlier epochs' records

    def checkpoint(self, cfg, *, rngs, epochs_done, step_in_epoch, with_optimizer=True):
        """The resumable checkpoint; ``rngs``: every rank's RNG state (gather_rng_states)."""
        return ck.make_checkpoint(
            model=ck.cpu_state_dict(self.model),
            ema=ck.cpu_state_dict(self.ema.shadow) if self.ema else None,
            optimizer=self.optimizer.state_dict() if with_optimizer else None,
            epochs_done=epochs_done, epoch_index=epochs_done - 1 if epochs_done else None,
            step=self.step, step_in_epoch=step_in_epoch, config=cfg.as_dict(),
            model_args=self.source.model_args, pruning=self.source.pruning,
            rng=rngs[0], rng_ranks=rngs if len(rngs) > 1 else None, ts_range=self.ts_range)


def _ts_range(cfg, opts, source):
    T = cfg.diffusion.num_diffusion_timesteps
    lo, hi = opts.ts_range or (source.resume or {}).get("ts_range") or (0, T)
    if not 0 <= lo < hi <= T:
        raise UserError(f"--ts_range {lo} {hi}: expected 0 <= lo < hi <= {T}")
    return int(lo), int(hi)


def build_run(cfg, opts, *, layout, device, rank, world):
    """The network, EMA and optimizer of a run, restored or fresh."""
    source = resolve_source(cfg, opts, layout)
    ts_range = _ts_range(cfg, opts, source)
    if source.model_args["in_channels"] != cfg.data.channels:
        raise UserError(f"the network takes {source.model_args['in_channels']} channels, "
                        f"data.channels is {cfg.data.channels}")
    torch.manual_seed(cfg.training.seed + rank)
    model = ck.build_model(source.model_args, source.pruning)
    if source.weights is not None:
        ck.load_weights(model, source.weights, source.weights_from)
    model.to(device)
    if use_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    m = cfg.model
    ema = EMA(model, m.ema_rate, foreach=cfg.fast.foreach_ema,
              warmup=m.ema_warmup) if m.ema else None
    if cfg.fast.cuda_graph:
        from runners.graph_step import check_graph_settings
        check_graph_settings(cfg, world)
        optimizer = make_optimizer(cfg, model.parameters(), device, graph_safe=True)
    else:
        optimizer = make_optimizer(cfg, model.parameters(), device)
    run = RunState(model, model, ema, optimizer, source, ts_range)
    r = source.resume
    if r is not None:
        ck.load_weights(model, r["model"], source.weights_from)
        if ema is not None and r.get("ema") is not None:
            ema.load_state_dict(r["ema"])
            ema.num_updates = r["step"]  # one EMA update per optimizer step
        if r.get("optimizer") is not None:
            optimizer.load_state_dict(r["optimizer"])
        run.start_epoch, run.step = r["epochs_done"], r["step"]
        run.start_step_in_epoch = r.get("step_in_epoch", 0)
        restore_rng(r, device, rank=rank, world=world, seed=cfg.training.seed)
    if precision(cfg, device) == "bf16 weights":
        run.master = MasterWeights(model)
    train_model = run.master.compute if run.master else model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.fast.compile:
        train_model = torch.compile(train_model)
    run.train_model = train_model
    run.nonfinite = NonFinite(device, first_step=run.step,
                              skip=cfg.training.on_nonfinite == "skip")
    return run


# --- the loop --------------------------------------------------------------------------------

@dataclass
class Loop:
    """What every epoch of one run needs."""
    cfg: dict
    opts: Any
    layout: Layout
    device: torch.device
    rank: int
    world: int
    diffusion: Diffusion
    sampler: Any
    stream: BatchStream
    autocast: Any
    log: RunLog
    earlybird: Any = None
    macs_per_image: int = 0   # of the network trained (torch-pruning's count, as the paper's)
    flops_per_image: int = 0  # forward FLOPs (FlopCounterMode): each cost record's FLOPs
    quartiles: Any = None     # QuartileLoss (rank 0): loss per timestep quartile, on the device
    graph: Any = None         # GraphStep under fast.cuda_graph (runners/graph_step.py)
    lock: Any = None          # the run's RunLock (rank 0): checked before each epoch's writes

    @property
    def doc(self):
        return self.opts.doc


def train(cfg, opts):
    """Train (or fine-tune) per ``cfg``; ``opts`` is a RunOptions. Returns the exit status.

    One process (or torchrun job) at a time per run directory; a divergence or a full disk
    ends the run in one line with nothing written after the last good checkpoint."""
    device = select_device(opts.device)
    rank, world = dist_setup(device, cfg.training.dist_timeout_s)
    configure_device(device)
    layout = Layout(opts.exp)
    lock = hold_for_job(layout.run_lock(opts.doc), f"run {layout.run_dir(opts.doc)}",
                        rank=rank, world=world, device=device)
    try:
        return _train(cfg, opts, layout, device, rank, world, lock)
    except Diverged as e:
        raise UserError(f"{e}; {last_good(layout, opts.doc)} Lower optim.lr, set "
                        f"optim.warmup or optim.grad_clip, or skip such steps with "
                        f"training.on_nonfinite: skip")
    except (OSError, RuntimeError) as e:
        why = write_refused(e)
        if why is None:
            raise
        raise UserError(f"{why} while writing {getattr(e, 'filename', None) or 'a file'}: the "
                        f"run stops; no partial file was left. {last_good(layout, opts.doc)} "
                        f"Free space, then: {resume_command(opts)}")
    finally:
        lock.release()


def _train(cfg, opts, layout, device, rank, world, lock=None):
    dataset = get_dataset(cfg, train=True)  # bad data fails before anything on disk changes
    run = build_run(cfg, opts, layout=layout, device=device, rank=rank, world=world)
    disk_line = None
    if rank == 0:
        # the disk check comes before anything on disk changes
        disk_line = policy.check_disk(
            cfg, policy.plan(cfg, policy.state_bytes(run.model), run.start_epoch),
            layout=layout, doc=opts.doc, fresh=run.source.resume is None)
        if run.source.resume is not None:
            if run.start_step_in_epoch:  # the steps before the interruption cost too
                run.carried_cost = interrupted_cost(layout.costs(opts.doc), run.start_epoch)
            keep_costs_before(layout.costs(opts.doc), run.start_epoch)
        elif opts.ni or run.source.restart:
            fresh_start(layout, opts.doc)
    loop = _make_loop(cfg, opts, run, layout=layout, device=device, rank=rank, world=world,
                      dataset=dataset)
    loop.lock = lock
    if disk_line:
        loop.log.info(disk_line)
    n_epochs = cfg.training.n_epochs
    last = min(n_epochs, opts.until_epoch or n_epochs)
    stopped_by, eb_stop = None, False
    with StopFlag() as stop:
        for epoch in range(run.start_epoch, last):
            stats = run_epoch(loop, run, epoch, stop)
            # every rank stops on a signal any of them got (torchrun: one decision, one save)
            if any_rank(stop.signum is not None, device, world):
                stopped_by = stop.signum or signal.SIGTERM
                rngs = gather_rng_states(device, world)
                if rank == 0:
                    save_interrupted(loop, run, epoch, stats, stopped_by, rngs)
                break
            if end_epoch(loop, run, epoch, stats):
                eb_stop = True
                break
    paused = stopped_by is None and not eb_stop and last < n_epochs
    if rank == 0 and stopped_by is None and not paused:
        atomic_write_text(layout.done_marker(opts.doc), "done\n")
        summary(loop, run)
    elif rank == 0 and paused:
        loop.log.say(f"paused after epoch {last - 1} (--until_epoch {last}); "
                     f"--resume_training continues it")
    loop.log.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0 if stopped_by is None else 128 + stopped_by


def _make_loop(cfg, opts, run, *, layout, device, rank, world, dataset):
    diffusion = Diffusion(**vars(cfg.diffusion), device=device)
    t = cfg.training
    stream = BatchStream(dataset, batch_size=t.batch_size, seed=t.seed, device=device,
                         random_flip=cfg.data.random_flip,
                         on_device=cfg.data.on_device,
                         max_on_device_mb=cfg.data.max_on_device_mb,
                         num_workers=cfg.data.num_workers, rank=rank, world_size=world,
                         max_steps=t.max_steps_per_epoch)
    if len(stream) == 0:
        raise UserError(f"data set has {len(dataset)} images: fewer than one batch per process")
    if stream.per_rank % t.grad_accum:
        raise UserError(f"training.grad_accum {t.grad_accum} does not divide the batch of "
                        f"each process ({stream.per_rank})")
    log = RunLog(layout.run_log(opts.doc), layout.tb_dir(opts.doc), rank == 0, opts.verbosity)
    sampler = make_timestep_sampler(cfg.training.timestep_sampler, *run.ts_range,
                                    alphas_cumprod=alphas_cumprod_f64(**vars(cfg.diffusion)),
                                    **vars(cfg.speed))
    loop = Loop(cfg, opts, layout, device, rank, world, diffusion, sampler, stream,
                autocast_for(cfg, device), log)
    if rank == 0:
        loop.quartiles = QuartileLoss(diffusion.num_timesteps, device)
    if cfg.fast.cuda_graph:
        from runners.graph_step import GraphStep
        loop.graph = GraphStep(run, sampler=sampler, diffusion=diffusion,
                               autocast=loop.autocast, grad_clip=cfg.optim.grad_clip,
                               channels_last=use_channels_last(cfg, device),
                               grad_accum=t.grad_accum, device=device,
                               full_batch=t.batch_size)
    if rank == 0:
        with training_rng_untouched(device):
            loop.macs_per_image, loop.flops_per_image = network_costs(run.model, run.source)
    if rank == 0:
        dump_config(cfg, layout.run_config(opts.doc))
        n_params = sum(p.numel() for p in run.model.parameters())
        lo, hi = run.ts_range
        src = run.source
        origin = ("resumed from " if src.resume is not None else "from ") + src.weights_from \
            if src.weights_from else "from scratch"
        log.say(f"{opts.doc}: {layout.run_dir(opts.doc)}, {n_params / 1e6:.3f}M params"
                f"{' (pruned)' if src.pruning else ''} {origin}; {device}"
                f"{f' x{world}' if world > 1 else ''}; {len(dataset)} images, "
                f"{len(stream)} steps/epoch of {t.batch_size}; epochs {run.start_epoch}.."
                f"{t.n_epochs - 1}; timesteps [{lo}, {hi}); {precision(cfg, device)}")
        if opts.comment:
            log.info(f"comment: {opts.comment}")
    if cfg.earlybird.enabled and rank == 0 and not run.source.pruning:
        from runners.earlybird_online import OnlineEarlyBird
        with training_rng_untouched(device):
            loop.earlybird = OnlineEarlyBird(cfg, run.source.model_args, layout=layout,
                                             doc=opts.doc, dataset=dataset, device=device)
        loop.earlybird.restore(run.start_epoch)
    return loop


def run_epoch(loop, run, epoch, stop):
    """The steps of one epoch (from ``run.start_step_in_epoch`` when resuming into it)."""
    cfg, device = loop.cfg, loop.device
    t_wall, t_proc = time.perf_counter(), time.process_time()
    run.train_model.train()
    loss_sum = torch.zeros((), device=device)
    n_steps, n_images = 0, 0
    first = run.start_step_in_epoch if epoch == run.start_epoch else 0
    bar = tqdm(loop.stream.epoch(epoch, first), total=len(loop.stream), initial=first,
               desc=f"epoch {epoch}", leave=False, dynamic_ncols=True,
               # None: off when the output is not a terminal (a log file, a Slurm job's output)
               disable=True if loop.rank != 0 or loop.log.verbosity == "quiet" else None)
    log_every = cfg.training.log_every
    channels_last = use_channels_last(cfg, device)
    total_steps = cfg.training.n_epochs * len(loop.stream)
    quartiles = loop.quartiles
    t_log = time.perf_counter()
    for x in bar:
        lr = lr_at(cfg.optim, run.step, total_steps)
        if loop.graph is not None:
            loss, gnorm = loop.graph(x, lr, quartiles)
        else:
            loss, gnorm = train_step(run, x, sampler=loop.sampler, diffusion=loop.diffusion,
                                     autocast=loop.autocast, grad_clip=cfg.optim.grad_clip,
                                     channels_last=channels_last,
                                     grad_accum=cfg.training.grad_accum, lr=lr,
                                     quartiles=quartiles)
        loss_sum += torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss))
        n_steps += 1
        n_images += x.shape[0]
        run.step += 1
        if run.step % log_every == 0 and loop.rank == 0:
            now = time.perf_counter()
            ips = log_every * x.shape[0] * loop.world / max(now - t_log, 1e-9)
            t_log = now
            lv = loss.item()
            run.nonfinite.check(epoch)
            bar.set_postfix(loss=f"{lv:.3f}", step=run.step)
            lr = float(run.optimizer.param_groups[0]["lr"])
            loop.log.scalars({"train/loss": lv, "train/grad_norm": float(gnorm),
                              "train/lr": lr, "train/images_per_s": ips,
                              **quartiles.read_and_reset()}, run.step)
            if loop.log.verbosity == "debug":
                tqdm.write(f"  step {run.step}: loss {lv:.4f} grad norm {float(gnorm):.3f} "
                           f"lr {lr:.3g} {ips:.0f} img/s")
        if loop.world == 1 and stop.signum is not None:
            break
        # several processes: they agree every log_every steps (a signal reaches the ranks at
        # slightly different moments; a rank alone leaving the loop would hang the others)
        if loop.world > 1 and run.step % log_every == 0 and \
                any_rank(stop.signum is not None, device, loop.world):
            break
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    run.nonfinite.check(epoch)  # before anything of this epoch is written
    skipped, _ = run.nonfinite.read()
    skipped -= run.skipped_before
    run.skipped_before += skipped
    return {"steps": n_steps, "images": n_images * loop.world, "step_in_epoch": first + n_steps,
            "wall_s": time.perf_counter() - t_wall, "process_s": time.process_time() - t_proc,
            "loss": (loss_sum / max(n_steps - skipped, 1)).item(), "skipped_steps": skipped}

