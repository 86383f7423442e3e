"""The training loop (docs/design.md, steps 1, 4, 5): dense training, EB-ticket fine-tuning and
region-restricted TA-EB ticket fine-tuning are the same loop on different networks.

Read in order: ``build_run`` decides which network and from where (resume > pruned ticket >
restore > scratch); ``train`` runs the epochs; ``run_epoch`` runs the steps of one epoch;
``end_epoch`` does the work after it (checkpoints, cost record, online early-bird masks, sample
grid). Per step (``train_step``): draw t, loss, backward, clip, step, EMA. Scalars reach the
host only every ``training.log_every`` steps. Only the training step draws from the training
RNG streams: everything else runs under ``training_rng_untouched``, so resume is exact.
"""
import glob
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from tqdm import tqdm

from datasets import BatchStream, get_dataset, inverse_data_transform
from models.diffusion import Diffusion, alphas_cumprod_f64, sample_images
from models.ema import EMA
from models.resample import make_timestep_sampler
from core import checkpoint as ck
from core import ckpt_policy as policy
from core.config import dump_config
from core.device import (autocast_for, configure_device, dist_setup, precision, rng_state,
                            select_device, set_rng_state, training_rng_untouched,
                            use_channels_last)
from core.layout import Layout
from core.lock import hold_for_job
from core.runlog import (RunLog, append_jsonl, archive, interrupted_cost,
                         keep_costs_before, training_flops)
from runners.step import Diverged, MasterWeights, NonFinite, QuartileLoss, train_step
from utils.errors import UserError
from utils.io import DiskFull, atomic_save, atomic_write_text


def make_optimizer(cfg, params, device):
    o = cfg.optim
    fast = {}
    if cfg.fast.fused_optimizer and o.optimizer in ("Adam", "AdamW"):
        fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if o.optimizer in ("Adam", "AdamW"):
        cls = torch.optim.Adam if o.optimizer == "Adam" else torch.optim.AdamW
        return cls(params, lr=o.lr, weight_decay=o.weight_decay,
                   betas=(o.beta1, 0.999), amsgrad=o.amsgrad, eps=o.eps, **fast)
    if o.optimizer == "RMSProp":
        return torch.optim.RMSprop(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=0.9)


class _StopFlag:
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


# --- which network, from where ---------------------------------------------------------------

@dataclass
class Source:
    """Where a run's network comes from."""
    model_args: dict
    pruning: Optional[dict] = None
    weights: Optional[dict] = None       # initial state dict (None: random init)
    weights_from: Optional[str] = None
    resume: Optional[dict] = None        # the checkpoint a resumed run continues


def _refuse_other_architecture(cfg, model_args, source, what):
    diff = ck.architecture_differences(cfg, model_args)
    if diff:
        shown = ", ".join(f"{k} (config {cfg.unet_kwargs()[k]!r}, checkpoint "
                          f"{model_args[k]!r})" for k in diff)
        raise UserError(f"{source}: cannot {what} with another architecture: {shown}")


def resolve_source(cfg, opts, layout):
    """resume > --load_pruned_model > --restore_from > a fresh dense network."""
    latest = layout.latest_checkpoint(opts.doc)
    if opts.resume:
        try:
            if not os.path.isfile(latest):
                raise UserError(f"--resume_training: no checkpoint at {latest}")
            c = ck.load_checkpoint(latest)
        except UserError as e:
            if not opts.resume_from_last_good:
                raise UserError(f"{e} (--resume_from_last_good falls back to the newest intact "
                                f"snapshot or per-epoch file)")
            c, latest = _last_good_checkpoint(layout, opts.doc, str(e))
        _refuse_other_architecture(cfg, c["model_args"], latest, "resume")
        return Source(c["model_args"], c.get("pruning"), resume=c, weights_from=latest)
    if layout.checkpoint_files(opts.doc) and not opts.ni:
        raise UserError(f"{layout.run_dir(opts.doc)} already holds checkpoints: pass "
                        f"--resume_training to continue or --ni to start over")
    if opts.load_pruned_model:
        src = opts.load_pruned_model
        tk = ck.load_checkpoint(src)
        if not tk.get("pruning"):
            raise UserError(f"--load_pruned_model {src}: not a pruned model (no pruning history)")
        _refuse_other_architecture(cfg, tk["model_args"], src, "fine-tune")
        return Source(tk["model_args"], tk["pruning"], tk["model"], src)
    if opts.restore_from:
        rs = ck.load_checkpoint(opts.restore_from)
        sd = ck.pick_weights(rs, opts.use_ema, opts.restore_from)
        if rs.get("model_args"):
            _refuse_other_architecture(cfg, rs["model_args"], opts.restore_from, "train on")
        if rs.get("pruning"):
            return Source(rs["model_args"], rs["pruning"], sd, opts.restore_from)
        return Source(cfg.unet_kwargs(), None, sd, opts.restore_from)
    return Source(cfg.unet_kwargs())


def _last_good_checkpoint(layout, doc, why):
    """The newest readable snapshot or per-epoch file of a run whose ckpt.pth is unreadable,
    made resumable; says which epoch it resumes from and what is lost."""
    files = {**layout.epoch_checkpoints(doc), **layout.snapshots(doc)}
    for epoch in sorted(files, reverse=True):
        try:
            c = ck.load_checkpoint(files[epoch])
        except UserError:
            print(f"note: {files[epoch]} is unreadable too")
            continue
        lost = ["the optimizer's moments (they restart from zero)"]
        if c.get("model") is None:  # an EMA-only file: the raw weights restart from the EMA
            c["model"] = c["ema"]
            lost.append("the raw weights (they restart from the EMA weights)")
        c.update(optimizer=None, step_in_epoch=0)
        print(f"note: {why}; resuming from {files[epoch]}, after epoch {epoch}: epochs "
              f"{epoch + 1} and later are trained again; lost: {' and '.join(lost)}")
        return c, files[epoch]
    raise UserError(f"{why}; and no intact snapshot or per-epoch file in {layout.run_dir(doc)} "
                    f"to fall back on: start over with --ni")


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

    def checkpoint(self, cfg, device, *, epochs_done, step_in_epoch, with_optimizer=True):
        return ck.make_checkpoint(
            model=ck.cpu_state_dict(self.model),
            ema=ck.cpu_state_dict(self.ema.shadow) if self.ema else None,
            optimizer=self.optimizer.state_dict() if with_optimizer else None,
            epochs_done=epochs_done, epoch_index=epochs_done - 1 if epochs_done else None,
            step=self.step, step_in_epoch=step_in_epoch, config=cfg.as_dict(),
            model_args=self.source.model_args, pruning=self.source.pruning,
            rng=rng_state(device), ts_range=self.ts_range)


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
        from runners.graph_step import check_graph_settings, graph_safe_optimizer
        check_graph_settings(cfg, world)
        optimizer = graph_safe_optimizer(cfg, model.parameters(), device)
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
        set_rng_state(r["rng"], device)
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


def _fresh_start(layout, doc):
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
        return _train(cfg, opts, layout, device, rank, world)
    except Diverged as e:
        raise UserError(f"{e}; {_last_good(layout, opts.doc)} Lower optim.lr, set "
                        f"optim.warmup or optim.grad_clip, or skip such steps with "
                        f"training.on_nonfinite: skip")
    except DiskFull as e:
        raise UserError(f"no space left on the disk while writing {e.filename}: the run stops; "
                        f"no partial file was left. {_last_good(layout, opts.doc)} Free space, "
                        f"then: {_resume_command(opts)}")
    finally:
        lock.release()


def _last_good(layout, doc):
    """What a resume reads now, in words."""
    path = layout.latest_checkpoint(doc)
    if not os.path.isfile(path):
        return "No checkpoint of this run was written."
    c = ck.load_checkpoint(path)
    return f"{path} (after epoch {c['epochs_done'] - 1}, step {c['step']}) is what " \
        f"--resume_training reads."


def _train(cfg, opts, layout, device, rank, world):
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
        elif opts.ni:
            _fresh_start(layout, opts.doc)
    loop = _make_loop(cfg, opts, run, layout=layout, device=device, rank=rank, world=world,
                      dataset=dataset)
    if disk_line:
        loop.log.info(disk_line)
    n_epochs = cfg.training.n_epochs
    last = min(n_epochs, opts.until_epoch or n_epochs)
    stopped_by, eb_stop = None, False
    with _StopFlag() as stop:
        for epoch in range(run.start_epoch, last):
            stats = run_epoch(loop, run, epoch, stop)
            if stop.signum is not None:
                if rank == 0:
                    _save_interrupted(loop, run, epoch, stats, stop.signum)
                stopped_by = stop.signum
                break
            if end_epoch(loop, run, epoch, stats):
                eb_stop = True
                break
    paused = stopped_by is None and not eb_stop and last < n_epochs
    if rank == 0 and stopped_by is None and not paused:
        atomic_write_text(layout.done_marker(opts.doc), "done\n")
        _summary(loop, run)
    elif rank == 0 and paused:
        loop.log.say(f"paused after epoch {last - 1} (--until_epoch {last}); "
                     f"--resume_training continues it")
    loop.log.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0 if stopped_by is None else 128 + stopped_by


def _resume_command(opts):
    """The command that continues this run: the one given, without --ni / --train_from_scratch,
    with --resume_training."""
    if not opts.command:
        return f"main.py --config ... --exp {opts.exp} --doc {opts.doc} --resume_training"
    drop = ("--ni", "--resume_training", "--train_from_scratch")
    args = [a for a in opts.command.split() if a not in drop]
    return " ".join(["python"] + args + ["--resume_training"])


def _save_interrupted(loop, run, epoch, stats, signum):
    path = loop.layout.latest_checkpoint(loop.doc)
    state = run.checkpoint(loop.cfg, loop.device, epochs_done=epoch,
                           step_in_epoch=stats["step_in_epoch"])
    atomic_save(state, path)
    if stats["steps"]:  # what this part of the epoch cost: its resume adds it to the epoch
        append_jsonl(loop.layout.costs(loop.doc),
                     dict(_cost_record(loop, run, epoch, stats), partial=True))
    loop.log.say(f"signal {signum}: saved a resumable checkpoint {path} (epoch {epoch}, step "
                 f"{run.step}); resume with: {_resume_command(loop.opts)}")


def _summary(loop, run):
    L, doc = loop.layout, loop.doc
    kept = [n for n, have in (("ckpt_ep*.pth", L.epoch_checkpoints(doc)),
                              ("snapshot_ep*.pth", L.snapshots(doc))) if have]
    lines = [f"finished {doc}: {run.step} steps; checkpoint {L.latest_checkpoint(doc)}"
             + (f" and {' and '.join(kept)} beside it" if kept else ""),
             f"  log {L.run_log(doc)}, costs {L.costs(doc)}, TensorBoard {L.tb_dir(doc)}"]
    if loop.earlybird is not None:
        found = {r: d.eb_epoch for r, d in loop.earlybird.detectors.items()}
        lines.append(f"  masks {L.masks_dir(doc)}; early-bird epochs "
                     + ", ".join(f"p={r:g}: {e if e is not None else 'none yet'}"
                                 for r, e in found.items()))
    if loop.cfg.training.sample_every:
        lines.append(f"  sample grids {os.path.dirname(L.training_grid(doc, 0))}")
    for line in lines:
        loop.log.say(line)


def network_costs(model, source):
    """(MACs, forward FLOPs) per image of a run's network: MACs from its pruning record, else
    counted by torch-pruning; FLOPs by FlopCounterMode (attention included)."""
    from models.pruning import count_flops, count_params_macs
    if source.pruning and source.pruning.get("macs"):
        macs = int(source.pruning["macs"])
    else:
        macs = count_params_macs(ck.build_model(source.model_args, source.pruning),
                                 source.model_args)[1]
    return macs, count_flops(model, source.model_args)


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
                               grad_accum=t.grad_accum, device=device)
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
        if stop.signum is not None:
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


def end_epoch(loop, run, epoch, stats):
    """Checkpoints, cost record, online masks and grid after epoch ``epoch``; returns whether
    training stops here (every early-bird ratio found and ``earlybird.stop``)."""
    cfg, layout, doc = loop.cfg, loop.layout, loop.doc
    stop_training = False
    if loop.rank == 0:
        state = run.checkpoint(cfg, loop.device, epochs_done=epoch + 1, step_in_epoch=0)
        _keep_epoch(loop, state, epoch)
        record = _cost_record(loop, run, epoch, stats)
        with training_rng_untouched(loop.device):
            if loop.earlybird is not None:
                t_eb = time.perf_counter()
                weights = run.ema.shadow if run.ema is not None and \
                    cfg.pruning.use_ema else run.model
                # weights not kept on disk: the tickets found now are pruned now
                found_all = loop.earlybird.update(
                    epoch, weights, loop.log,
                    save_tickets=not policy.keeps_epoch_file(cfg, epoch))
                record["earlybird_s"] = time.perf_counter() - t_eb
                stop_training = found_all and cfg.earlybird.stop
            append_jsonl(layout.costs(doc), record)
            loop.log.scalars({"epoch/loss": stats["loss"], "epoch/wall_s": stats["wall_s"]},
                             epoch)
            loop.log.say(_epoch_line(loop, epoch, stats))
            every = cfg.training.sample_every
            full_range = tuple(run.ts_range) == (0, loop.diffusion.num_timesteps)
            # a region ticket alone cannot sample the whole chain: its grid would be noise
            if every and full_range and ((epoch + 1) % every == 0 or
                                         epoch + 1 == cfg.training.n_epochs or
                                         stop_training):
                grid = sample_grid(cfg, run.ema.shadow if run.ema is not None else run.model,
                                   diffusion=loop.diffusion, device=loop.device,
                                   path=layout.training_grid(doc, epoch),
                                   autocast=loop.autocast, title=f"{doc}, epoch {epoch}")
                loop.log.image("samples", grid, epoch)
        # ckpt.pth last: a kill before this line reruns the epoch, and its records with it
        atomic_save(state, layout.latest_checkpoint(doc))
    if loop.world > 1:
        flag = torch.tensor([1.0 if stop_training else 0.0], device=loop.device)
        dist.broadcast(flag, 0)
        stop_training = bool(flag.item())
    if stop_training and loop.rank == 0:
        loop.log.say(f"early-bird found for every ratio: dense training stops after "
                     f"epoch {epoch}")
    return stop_training


def _cost_record(loop, run, epoch, stats):
    """The cost record of ``epoch``; resumed mid-epoch, it includes the interrupted part."""
    record = {"epoch": epoch, "steps": stats["steps"], "images": stats["images"],
              "wall_s": stats["wall_s"], "process_s": stats["process_s"], "loss": stats["loss"],
              "skipped_steps": stats.get("skipped_steps", 0),
              "world_size": loop.world, "device": str(loop.device.type),
              "macs_per_image": loop.macs_per_image, "flops_per_image": loop.flops_per_image}
    prev = run.carried_cost  # also carried on when this epoch is interrupted again
    if prev is not None and prev["epoch"] == epoch:
        steps = record["steps"] + prev["steps"]
        record["loss"] = (record["loss"] * record["steps"] + prev["loss"] * prev["steps"]) / \
            max(steps, 1)
        for k in ("steps", "images", "wall_s", "process_s"):
            record[k] += prev[k]
    record["train_flops"] = training_flops(loop.flops_per_image, record["images"])
    return record


def _keep_epoch(loop, state, epoch):
    """The per-epoch file and snapshot of ``epoch`` that training.epoch_ckpt & co. ask for."""
    cfg, layout, doc = loop.cfg, loop.layout, loop.doc
    if policy.keeps_epoch_file(cfg, epoch):
        # no optimizer state: these are what masks and tickets read
        atomic_save(policy.epoch_file_state(cfg, state), layout.epoch_checkpoint(doc, epoch))
    if policy.is_snapshot(cfg, epoch):
        atomic_save(policy.snapshot_state(state), layout.snapshot(doc, epoch))
        for old in policy.old_snapshots(cfg, layout.snapshots(doc)):
            os.remove(old)


def _epoch_line(loop, epoch, stats):
    n = loop.cfg.training.n_epochs
    line = (f"epoch {epoch}/{n - 1}: loss {stats['loss']:.4f}, "
            f"{stats['images'] / max(stats['wall_s'], 1e-9):.0f} img/s, {stats['wall_s']:.1f}s")
    if stats.get("skipped_steps"):
        line += f", {stats['skipped_steps']} step(s) skipped (non-finite loss or gradient)"
    if loop.earlybird is not None:
        dists = loop.earlybird.last_distances()
        line += "; EB distance " + ", ".join(
            f"p={r:g}: {'-' if d is None else f'{d:.3f}'}" for r, d in dists.items())
        found = [f"p={r:g}" for r, det in loop.earlybird.detectors.items()
                 if det.eb_epoch == epoch]
        if found:
            line += f" (early bird found for {', '.join(found)})"
    return line


def lr_at(optim, step, total_steps):
    """The learning rate of optimizer step ``step`` (0-based): linear warm-up over
    ``optim.warmup`` steps, then constant, or cosine / linear decay to ``optim.min_lr`` at the
    last step. A function of the step alone, so resume needs no scheduler state."""
    lr, warmup = optim.lr, optim.warmup
    if step < warmup:
        return lr * (step + 1) / warmup
    if optim.schedule == "constant":
        return lr
    p = min(1.0, (step - warmup) / max(1, total_steps - 1 - warmup))
    lo = optim.min_lr
    if optim.schedule == "cosine":
        return lo + (lr - lo) * 0.5 * (1.0 + math.cos(math.pi * p))
    return lr + (lo - lr) * p


def sample_grid(cfg, model, *, diffusion, device, path, autocast, title=None):
    """A grid of samples from fixed noise (its own generators, not the training RNG), saved as
    a titled PNG; returns the grid image [C, H, W] in [0, 1]."""
    from runners.grids import save_sample_grid
    n = cfg.training.grid_samples
    d, s = cfg.data, cfg.sampling
    g = torch.Generator(device="cpu").manual_seed(s.seed)
    noise = torch.randn(n, d.channels, d.image_size, d.image_size, generator=g)
    step_gen = torch.Generator(device=device).manual_seed(s.seed + 1)
    was_training = model.training
    model.eval()
    x = sample_images(model, diffusion, noise.to(device), generator=step_gen, autocast=autocast,
                      timesteps=s.timesteps, skip_type=s.skip_type,
                      sample_type=s.sample_type, eta=s.eta)
    model.train(was_training)
    images = inverse_data_transform(x.float().cpu())
    label = f"{title}, " if title else ""
    return save_sample_grid(images, path, f"{label}{s.timesteps} {s.skip_type} steps")
