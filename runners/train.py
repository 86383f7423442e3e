"""The training loop (DESIGN.md steps 1, 4, 5): dense training, EB-ticket fine-tuning and
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
from models.diffusion import Diffusion, sample_images
from models.ema import EMA
from models.resample import AntitheticSampler
from models.unet import model_args_from_config
from runners import checkpoint as ck
from runners.config import dump_config
from runners.device import (autocast_for, configure_device, dist_setup, rng_state,
                            select_device, set_rng_state, training_rng_untouched,
                            use_channels_last)
from runners.layout import Layout
from runners.runlog import RunLog, append_jsonl, keep_costs_before
from utils.errors import UserError
from utils.io import atomic_save, atomic_write_text


def make_optimizer(cfg, params, device):
    o = cfg["optim"]
    fast = {}
    if cfg["fast"]["fused_optimizer"] and o["optimizer"] in ("Adam", "AdamW"):
        fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if o["optimizer"] in ("Adam", "AdamW"):
        cls = torch.optim.Adam if o["optimizer"] == "Adam" else torch.optim.AdamW
        return cls(params, lr=o["lr"], weight_decay=o["weight_decay"],
                   betas=(o["beta1"], 0.999), amsgrad=o["amsgrad"], eps=o["eps"], **fast)
    if o["optimizer"] == "RMSProp":
        return torch.optim.RMSprop(params, lr=o["lr"], weight_decay=o["weight_decay"])
    return torch.optim.SGD(params, lr=o["lr"], momentum=0.9)


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
        shown = ", ".join(f"{k} (config {model_args_from_config(cfg)[k]!r}, checkpoint "
                          f"{model_args[k]!r})" for k in diff)
        raise UserError(f"{source}: cannot {what} with another architecture: {shown}")


def resolve_source(cfg, opts, layout):
    """resume > --load_pruned_model > --restore_from > a fresh dense network."""
    latest = layout.latest_checkpoint(opts.doc)
    if opts.resume:
        if not os.path.isfile(latest):
            raise UserError(f"--resume_training: no checkpoint at {latest}")
        c = ck.load_checkpoint(latest)
        _refuse_other_architecture(cfg, c["model_args"], latest, "resume")
        return Source(c["model_args"], c.get("pruning"), resume=c, weights_from=latest)
    if glob.glob(os.path.join(layout.run_dir(opts.doc), "ckpt*.pth")) and not opts.ni:
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
        sd = rs["ema"] if opts.use_ema and rs.get("ema") else rs["model"]
        if rs.get("model_args"):
            _refuse_other_architecture(cfg, rs["model_args"], opts.restore_from, "train on")
        if rs.get("pruning"):
            return Source(rs["model_args"], rs["pruning"], sd, opts.restore_from)
        return Source(model_args_from_config(cfg), None, sd, opts.restore_from)
    return Source(model_args_from_config(cfg))


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

    def checkpoint(self, cfg, device, *, epochs_done, step_in_epoch, with_optimizer=True):
        return ck.make_checkpoint(
            model=ck.cpu_state_dict(self.model),
            ema=ck.cpu_state_dict(self.ema.shadow) if self.ema else None,
            optimizer=self.optimizer.state_dict() if with_optimizer else None,
            epochs_done=epochs_done, epoch_index=epochs_done - 1 if epochs_done else None,
            step=self.step, step_in_epoch=step_in_epoch, config=cfg,
            model_args=self.source.model_args, pruning=self.source.pruning,
            rng=rng_state(device), ts_range=self.ts_range)


def _ts_range(cfg, opts, source):
    T = cfg["diffusion"]["num_diffusion_timesteps"]
    lo, hi = opts.ts_range or (source.resume or {}).get("ts_range") or (0, T)
    if not 0 <= lo < hi <= T:
        raise UserError(f"--ts_range {lo} {hi}: expected 0 <= lo < hi <= {T}")
    return int(lo), int(hi)


def build_run(cfg, opts, layout, device, rank, world):
    """The network, EMA and optimizer of a run, restored or fresh."""
    source = resolve_source(cfg, opts, layout)
    ts_range = _ts_range(cfg, opts, source)
    if source.model_args["in_channels"] != cfg["data"]["channels"]:
        raise UserError(f"the network takes {source.model_args['in_channels']} channels, "
                        f"data.channels is {cfg['data']['channels']}")
    torch.manual_seed(cfg["training"]["seed"] + rank)
    model = ck.build_model(source.model_args, source.pruning)
    if source.weights is not None:
        ck.load_weights(model, source.weights, source.weights_from)
    model.to(device)
    if use_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    m = cfg["model"]
    ema = EMA(model, m["ema_rate"], foreach=cfg["fast"]["foreach_ema"],
              warmup=m["ema_warmup"]) if m["ema"] else None
    optimizer = make_optimizer(cfg, model.parameters(), device)
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg["fast"]["compile"]:
        train_model = torch.compile(train_model)
    run = RunState(model, train_model, ema, optimizer, source, ts_range)
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
    return run


def _fresh_start(layout, doc):
    """--ni without --resume_training: earlier per-epoch results of this run are replaced."""
    d = layout.run_dir(doc)
    for pattern in ("ckpt_ep*.pth", "ckpt.pth", "costs.jsonl", "stats.jsonl",
                    "earlybird.json", "DONE"):
        for f in glob.glob(os.path.join(d, pattern)):
            os.remove(f)


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

    @property
    def doc(self):
        return self.opts.doc


def train(cfg, opts):
    """Train (or fine-tune) per ``cfg``; ``opts`` is a RunOptions. Returns the exit status."""
    device = select_device(opts.device)
    rank, world = dist_setup(device)
    configure_device(device)
    layout = Layout(opts.exp)
    dataset = get_dataset(cfg, train=True)  # bad data fails before anything on disk changes
    run = build_run(cfg, opts, layout, device, rank, world)
    if rank == 0:
        if run.source.resume is not None:
            keep_costs_before(layout.costs(opts.doc), run.start_epoch)
        elif opts.ni:
            _fresh_start(layout, opts.doc)
    loop = _make_loop(cfg, opts, layout, device, rank, world, dataset, run)
    n_epochs = cfg["training"]["n_epochs"]
    stopped_by = None
    with _StopFlag() as stop:
        for epoch in range(run.start_epoch, n_epochs):
            stats = run_epoch(loop, run, epoch, stop)
            if stop.signum is not None:
                if rank == 0:
                    state = run.checkpoint(cfg, device, epochs_done=epoch,
                                           step_in_epoch=stats["step_in_epoch"])
                    atomic_save(state, layout.latest_checkpoint(opts.doc))
                    loop.log.info(f"signal {stop.signum}: saved resumable checkpoint at epoch "
                                  f"{epoch} step {run.step}")
                stopped_by = stop.signum
                break
            if end_epoch(loop, run, epoch, stats):
                break
    if rank == 0 and stopped_by is None:
        atomic_write_text(layout.done_marker(opts.doc), "done\n")
    loop.log.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0 if stopped_by is None else 128 + stopped_by


def _make_loop(cfg, opts, layout, device, rank, world, dataset, run):
    diffusion = Diffusion(cfg["diffusion"], device)
    t = cfg["training"]
    stream = BatchStream(dataset, batch_size=t["batch_size"], seed=t["seed"], device=device,
                         random_flip=cfg["data"]["random_flip"],
                         on_device=cfg["data"]["on_device"],
                         max_on_device_mb=cfg["data"]["max_on_device_mb"],
                         num_workers=cfg["data"]["num_workers"], rank=rank, world_size=world,
                         max_steps=t["max_steps_per_epoch"])
    if len(stream) == 0:
        raise UserError(f"data set has {len(dataset)} images: fewer than one batch per process")
    log = RunLog(layout.run_log(opts.doc), layout.tb_dir(opts.doc), rank == 0)
    loop = Loop(cfg, opts, layout, device, rank, world, diffusion,
                AntitheticSampler(*run.ts_range), stream, autocast_for(cfg, device), log)
    if rank == 0:
        dump_config(cfg, layout.run_config(opts.doc))
        n_params = sum(p.numel() for p in run.model.parameters())
        lo, hi = run.ts_range
        log.info(f"start: epoch {run.start_epoch} step {run.step} params {n_params} device "
                 f"{device} world {world} ts_range [{lo}, {hi}) pruned "
                 f"{bool(run.source.pruning)}" + (f" comment {opts.comment}" if opts.comment
                                                   else ""))
    if cfg["earlybird"]["enabled"] and rank == 0 and not run.source.pruning:
        from runners.earlybird_online import OnlineEarlyBird
        with training_rng_untouched(device):
            loop.earlybird = OnlineEarlyBird(cfg, run.source.model_args, layout, opts.doc,
                                             dataset)
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
               desc=f"epoch {epoch}", disable=loop.rank != 0, leave=False, dynamic_ncols=True)
    log_every = cfg["training"]["log_every"]
    channels_last = use_channels_last(cfg, device)
    t_log = time.perf_counter()
    for x in bar:
        loss, gnorm = train_step(run, x, loop.sampler, loop.diffusion, loop.autocast,
                                 cfg["optim"]["grad_clip"], channels_last)
        loss_sum += loss
        n_steps += 1
        n_images += x.shape[0]
        run.step += 1
        if run.step % log_every == 0 and loop.rank == 0:
            now = time.perf_counter()
            ips = log_every * x.shape[0] * loop.world / max(now - t_log, 1e-9)
            t_log = now
            lv = loss.item()
            bar.set_postfix(loss=f"{lv:.3f}", step=run.step)
            loop.log.scalars({"train/loss": lv, "train/grad_norm": float(gnorm),
                              "train/lr": run.optimizer.param_groups[0]["lr"],
                              "train/images_per_s": ips}, run.step)
        if stop.signum is not None:
            break
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"steps": n_steps, "images": n_images * loop.world, "step_in_epoch": first + n_steps,
            "wall_s": time.perf_counter() - t_wall, "process_s": time.process_time() - t_proc,
            "loss": (loss_sum / max(n_steps, 1)).item()}


def end_epoch(loop, run, epoch, stats):
    """Checkpoints, cost record, online masks and grid after epoch ``epoch``; returns whether
    training stops here (every early-bird ratio found and ``earlybird.stop``)."""
    cfg, layout, doc = loop.cfg, loop.layout, loop.doc
    stop_training = False
    if loop.rank == 0:
        state = run.checkpoint(cfg, loop.device, epochs_done=epoch + 1, step_in_epoch=0)
        # per-epoch files carry no optimizer state: they are what masks and tickets read
        atomic_save(dict(state, optimizer=None), layout.epoch_checkpoint(doc, epoch))
        record = {"epoch": epoch, "steps": stats["steps"], "images": stats["images"],
                  "wall_s": stats["wall_s"], "process_s": stats["process_s"],
                  "loss": stats["loss"], "world_size": loop.world,
                  "device": str(loop.device.type)}
        with training_rng_untouched(loop.device):
            if loop.earlybird is not None:
                t_eb = time.perf_counter()
                weights = run.ema.shadow if run.ema is not None and \
                    cfg["pruning"]["use_ema"] else run.model
                found_all = loop.earlybird.update(epoch, weights, loop.log)
                record["earlybird_s"] = time.perf_counter() - t_eb
                stop_training = found_all and cfg["earlybird"]["stop"]
            append_jsonl(layout.costs(doc), record)
            loop.log.scalars({"epoch/loss": stats["loss"], "epoch/wall_s": stats["wall_s"]},
                             epoch)
            loop.log.info(f"epoch {epoch}: loss {stats['loss']:.4f} wall {stats['wall_s']:.1f}s "
                          f"process {stats['process_s']:.1f}s steps {stats['steps']}")
            every = cfg["training"]["sample_every"]
            if every and ((epoch + 1) % every == 0 or epoch + 1 == cfg["training"]["n_epochs"]
                          or stop_training):
                sample_grid(cfg, run.ema.shadow if run.ema is not None else run.model,
                            loop.diffusion, loop.device, layout.training_grid(doc, epoch),
                            loop.autocast)
        # ckpt.pth last: a kill before this line reruns the epoch, and its records with it
        atomic_save(state, layout.latest_checkpoint(doc))
    if loop.world > 1:
        flag = torch.tensor([1.0 if stop_training else 0.0], device=loop.device)
        dist.broadcast(flag, 0)
        stop_training = bool(flag.item())
    if stop_training and loop.rank == 0:
        loop.log.info(f"early-bird found for every ratio: dense training stops after "
                      f"epoch {epoch}")
        print(f"early-bird found for every ratio: stopping after epoch {epoch}")
    return stop_training


def train_step(run, x, sampler, diffusion, autocast, grad_clip, channels_last=False):
    """One optimizer step; returns (loss, grad norm) as device tensors (no host sync)."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t, weights = sampler.sample(x.shape[0], x.device)
    with autocast():
        loss = diffusion.loss(run.train_model, x, t, weights=weights)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), grad_clip) if grad_clip > 0 \
        else torch.zeros((), device=x.device)
    run.optimizer.step()
    if run.ema is not None:
        run.ema.update(run.model)
    return loss.detach(), gnorm


def sample_grid(cfg, model, diffusion, device, path, autocast):
    """A grid of samples from fixed noise (its own generators, not the training RNG)."""
    import torchvision.utils as vutils
    n = cfg["training"]["grid_samples"]
    d, s = cfg["data"], cfg["sampling"]
    g = torch.Generator(device="cpu").manual_seed(s["seed"])
    noise = torch.randn(n, d["channels"], d["image_size"], d["image_size"], generator=g)
    step_gen = torch.Generator(device=device).manual_seed(s["seed"] + 1)
    was_training = model.training
    model.eval()
    x = sample_images(model, diffusion, noise.to(device), generator=step_gen, autocast=autocast,
                      timesteps=s["timesteps"], skip_type=s["skip_type"],
                      sample_type=s["sample_type"], eta=s["eta"])
    model.train(was_training)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    vutils.save_image(inverse_data_transform(x.float().cpu()), path,
                      nrow=int(math.sqrt(n)) or 1)
