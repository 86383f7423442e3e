"""The training loop (DESIGN.md steps 1, 4, 5): dense training, EB-ticket fine-tuning and
region-restricted TA-EB ticket fine-tuning are the same loop on different networks.

Order per step: draw t (antithetic, optionally inside [lo, hi)), loss, backward, clip, step,
EMA. Per epoch: checkpoint ``ckpt_ep{E}.pth`` + ``ckpt.pth``, cost record, online early-bird
masks, sample grid. Scalars reach the host only every ``training.log_every`` steps.
"""
import glob
import json
import math
import os
import signal
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from tqdm import tqdm

from datasets import BatchStream, get_dataset, inverse_data_transform
from models.diffusion import Diffusion, RegionTimestepSampler, sample_images
from models.ema import EMA, unwrap
from models.unet import model_args_from_config
from runners import checkpoint as ck
from runners.config import dump_config
from runners.errors import UserError


def run_dirs(exp, doc):
    return {"log": os.path.join(exp, "logs", doc), "tb": os.path.join(exp, "tensorboard", doc),
            "masks": os.path.join(exp, "pruned", doc, "masks"),
            "models": os.path.join(exp, "pruned", doc, "models")}


def select_device(requested=None):
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def autocast_for(cfg, device):
    """A zero-argument context factory: bf16 autocast on CUDA when the config allows."""
    amp = cfg["fast"]["amp"]
    if device.type == "cuda" and amp in ("auto", "bf16"):
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and amp == "bf16":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext


def use_channels_last(cfg, device):
    v = cfg["fast"]["channels_last"]
    return v == "on" or (v == "auto" and device.type == "cuda")


def make_optimizer(cfg, params, device):
    o = cfg["optim"]
    fast = {}
    if cfg["fast"]["fused_optimizer"] and o["optimizer"] in ("Adam", "AdamW"):
        fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if o["optimizer"] == "Adam":
        return torch.optim.Adam(params, lr=o["lr"], weight_decay=o["weight_decay"],
                                betas=(o["beta1"], 0.999), amsgrad=o["amsgrad"], eps=o["eps"],
                                **fast)
    if o["optimizer"] == "AdamW":
        return torch.optim.AdamW(params, lr=o["lr"], weight_decay=o["weight_decay"],
                                 betas=(o["beta1"], 0.999), amsgrad=o["amsgrad"], eps=o["eps"],
                                 **fast)
    if o["optimizer"] == "RMSProp":
        return torch.optim.RMSprop(params, lr=o["lr"], weight_decay=o["weight_decay"])
    return torch.optim.SGD(params, lr=o["lr"], momentum=0.9)


def _rng_state(device):
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


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


def _dist_setup(device):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Logger:
    """log.txt, stats.jsonl, TensorBoard — rank 0 only."""

    def __init__(self, dirs, enabled):
        self.enabled = enabled
        self.tb = None
        if enabled:
            os.makedirs(dirs["log"], exist_ok=True)
            self.log_file = open(os.path.join(dirs["log"], "log.txt"), "a")
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(dirs["tb"])

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


def read_costs(log_dir):
    """The per-epoch cost records of a run ([] when it has none)."""
    path = os.path.join(log_dir, "costs.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _append_jsonl(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _fresh_start(dirs):
    """--ni without --resume_training: earlier per-epoch results of this run are replaced."""
    for pattern in ("ckpt_ep*.pth", "ckpt.pth", "costs.jsonl", "stats.jsonl",
                    "earlybird.json", "DONE"):
        for f in glob.glob(os.path.join(dirs["log"], pattern)):
            os.remove(f)


def train(cfg, opts):
    """Train (or fine-tune) per ``cfg``. opts: exp, doc, resume, ni, load_pruned_model,
    ts_range, device, use_ema, timesteps, skip_type, sample_type, eta, restore_from."""
    device = select_device(opts.get("device"))
    rank, world = _dist_setup(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    dirs = run_dirs(opts["exp"], opts["doc"])
    latest = os.path.join(dirs["log"], "ckpt.pth")
    T = cfg["diffusion"]["num_diffusion_timesteps"]

    # --- what network, from where -------------------------------------------------------
    resume = None
    if opts.get("resume"):
        if not os.path.isfile(latest):
            raise UserError(f"--resume_training: no checkpoint at {latest}")
        resume = ck.load_checkpoint(latest)
    elif glob.glob(os.path.join(dirs["log"], "ckpt*.pth")) and not opts.get("ni"):
        raise UserError(f"{dirs['log']} already holds checkpoints: pass --resume_training to "
                        f"continue or --ni to start over")
    ts_range = opts.get("ts_range") or (resume or {}).get("ts_range") or [0, T]
    lo, hi = int(ts_range[0]), int(ts_range[1])
    if not 0 <= lo < hi <= T:
        raise UserError(f"--ts_range {lo} {hi}: expected 0 <= lo < hi <= {T}")

    dataset = get_dataset(cfg, train=True)  # bad data fails before anything on disk changes
    pruning, init_sd = None, None
    if resume is not None:
        model_args, pruning = resume["model_args"], resume.get("pruning")
    elif opts.get("load_pruned_model"):
        src = opts["load_pruned_model"]
        tk = ck.load_checkpoint(src)
        if not tk.get("pruning"):
            raise UserError(f"--load_pruned_model {src}: not a pruned model (no pruning history)")
        model_args, pruning = tk["model_args"], tk["pruning"]
        init_sd = tk["model"]
    else:
        model_args = model_args_from_config(cfg)
        if opts.get("restore_from"):
            rs = ck.load_checkpoint(opts["restore_from"])
            init_sd = rs["ema"] if opts.get("use_ema") and rs.get("ema") else rs["model"]
            if rs.get("pruning"):
                model_args, pruning = rs["model_args"], rs["pruning"]
    if model_args["in_channels"] != cfg["data"]["channels"]:
        raise UserError(f"the network takes {model_args['in_channels']} channels, data.channels "
                        f"is {cfg['data']['channels']}")

    seed = cfg["training"]["seed"] + rank
    torch.manual_seed(seed)
    model = ck.build_model(model_args, pruning)
    if init_sd is not None:
        ck.load_weights(model, init_sd, opts.get("load_pruned_model") or opts["restore_from"])
    model.to(device)
    if use_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, cfg["model"]["ema_rate"], foreach=cfg["fast"]["foreach_ema"],
              warmup=cfg["model"]["ema_warmup"]) if cfg["model"]["ema"] else None
    optimizer = make_optimizer(cfg, model.parameters(), device)
    start_epoch, step, start_step_in_epoch = 0, 0, 0
    if resume is not None:
        ck.load_weights(model, resume["model"], latest)
        if ema is not None and resume.get("ema") is not None:
            ema.load_state_dict(resume["ema"])
            ema.num_updates = resume["step"]  # one EMA update per optimizer step
        if resume.get("optimizer") is not None:
            optimizer.load_state_dict(resume["optimizer"])
        start_epoch, step = resume["epoch"], resume["step"]
        start_step_in_epoch = resume.get("step_in_epoch", 0)
        _set_rng_state(resume["rng"], device)
    elif rank == 0 and opts.get("ni"):
        _fresh_start(dirs)

    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg["fast"]["compile"]:
        train_model = torch.compile(train_model)

    diffusion = Diffusion(cfg["diffusion"], device)
    sampler = RegionTimestepSampler(lo, hi)
    stream = BatchStream(dataset, batch_size=cfg["training"]["batch_size"],
                         seed=cfg["training"]["seed"], device=device,
                         random_flip=cfg["data"]["random_flip"], on_device=cfg["data"]["on_device"],
                         max_on_device_mb=cfg["data"]["max_on_device_mb"],
                         num_workers=cfg["data"]["num_workers"], rank=rank, world_size=world,
                         max_steps=cfg["training"]["max_steps_per_epoch"])
    if len(stream) == 0:
        raise UserError(f"data set has {len(dataset)} images: fewer than one batch per process")
    autocast = autocast_for(cfg, device)
    log = Logger(dirs, rank == 0)
    if rank == 0:
        dump_config(cfg, os.path.join(dirs["log"], "config.yml"))
        n_params = sum(p.numel() for p in model.parameters())
        log.info(f"start: epoch {start_epoch} step {step} params {n_params} device {device} "
                 f"world {world} ts_range [{lo}, {hi}) pruned {bool(pruning)}")

    eb = None
    if cfg["earlybird"]["enabled"] and rank == 0 and not pruning:
        from runners.earlybird_online import OnlineEarlyBird
        eb = OnlineEarlyBird(cfg, model_args, dirs, opts["doc"], diffusion, dataset, device)
        eb.restore(start_epoch)

    n_epochs = cfg["training"]["n_epochs"]
    channels_last = use_channels_last(cfg, device)
    log_every = max(cfg["training"]["log_every"], 1)
    grad_clip = cfg["optim"]["grad_clip"]
    stopped_by = None
    stop_training = False
    with _StopFlag() as stop:
        for epoch in range(start_epoch, n_epochs):
            t_wall, t_proc = time.perf_counter(), time.process_time()
            train_model.train()
            loss_sum = torch.zeros((), device=device)
            n_seen, n_images = 0, 0
            first = start_step_in_epoch if epoch == start_epoch else 0
            bar = tqdm(stream.epoch(epoch, first), total=len(stream), initial=first,
                       desc=f"epoch {epoch}", disable=rank != 0, leave=False, dynamic_ncols=True)
            t_log = time.perf_counter()
            step_in_epoch = first
            for x in bar:
                loss, gnorm = train_step(train_model, model, x, sampler, diffusion, optimizer,
                                         ema, autocast, grad_clip, channels_last)
                loss_sum += loss
                n_seen += 1
                n_images += x.shape[0]
                step += 1
                step_in_epoch += 1
                if step % log_every == 0 and rank == 0:
                    now = time.perf_counter()
                    ips = log_every * x.shape[0] * world / max(now - t_log, 1e-9)
                    t_log = now
                    lv = loss.item()
                    bar.set_postfix(loss=f"{lv:.3f}", step=step)
                    log.scalars({"train/loss": lv, "train/grad_norm": float(gnorm),
                                 "train/lr": optimizer.param_groups[0]["lr"],
                                 "train/images_per_s": ips}, step)
                if stop.signum is not None:
                    break
            bar.close()
            if stop.signum is not None:
                if rank == 0:
                    state = _state(model, ema, optimizer, epoch, step, step_in_epoch, cfg,
                                   model_args, pruning, device, (lo, hi))
                    ck.atomic_save(state, latest)
                    log.info(f"signal {stop.signum}: saved resumable checkpoint at epoch {epoch} "
                             f"step {step}")
                stopped_by = stop.signum
                break
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall, proc = time.perf_counter() - t_wall, time.process_time() - t_proc
            mean_loss = (loss_sum / max(n_seen, 1)).item()
            if rank == 0:
                state = _state(model, ema, optimizer, epoch + 1, step, 0, cfg, model_args,
                               pruning, device, (lo, hi))
                ep_path = os.path.join(dirs["log"], f"ckpt_ep{epoch}.pth")
                ck.atomic_save({k: v for k, v in state.items() if k != "optimizer"}, ep_path)
                ck.atomic_save(state, latest)
                record = {"epoch": epoch, "steps": n_seen, "images": n_images * world,
                          "wall_s": wall, "process_s": proc, "loss": mean_loss,
                          "world_size": world, "device": str(device.type)}
                if eb is not None:
                    t_eb = time.perf_counter()
                    found_all = eb.update(epoch, ema.shadow if ema is not None and
                                          cfg["pruning"]["use_ema"] else model, log)
                    record["earlybird_s"] = time.perf_counter() - t_eb
                    stop_training = found_all and cfg["earlybird"]["stop"]
                _append_jsonl(os.path.join(dirs["log"], "costs.jsonl"), record)
                log.scalars({"epoch/loss": mean_loss, "epoch/wall_s": wall}, epoch)
                log.info(f"epoch {epoch}: loss {mean_loss:.4f} wall {wall:.1f}s process "
                         f"{proc:.1f}s steps {n_seen}")
                every = cfg["training"]["sample_every"]
                if every and ((epoch + 1) % every == 0 or epoch + 1 == n_epochs or stop_training):
                    _sample_grid(cfg, opts, ema.shadow if ema is not None else model,
                                 diffusion, device, os.path.join(dirs["log"], "samples",
                                                                 f"ep{epoch}.png"), autocast)
            if world > 1:
                flag = torch.tensor([1.0 if stop_training else 0.0], device=device)
                dist.broadcast(flag, 0)
                stop_training = bool(flag.item())
            if stop_training:
                if rank == 0:
                    log.info(f"early-bird found for every ratio: dense training stops after "
                             f"epoch {epoch}")
                    print(f"early-bird found for every ratio: stopping after epoch {epoch}")
                break
    if rank == 0 and stopped_by is None:
        ck.atomic_write_text(os.path.join(dirs["log"], "DONE"), "done\n")
    log.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if stopped_by is not None:
        return 128 + stopped_by
    return 0


def train_step(train_model, model, x, sampler, diffusion, optimizer, ema, autocast, grad_clip,
               channels_last=False):
    """One optimizer step; returns (loss, grad norm) as device tensors (no host sync)."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t = sampler.sample(x.shape[0], x.device)
    with autocast():
        loss = diffusion.loss(train_model, x, t)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip > 0 \
        else torch.zeros((), device=x.device)
    optimizer.step()
    if ema is not None:
        ema.update(model)
    return loss.detach(), gnorm


def _state(model, ema, optimizer, epoch, step, step_in_epoch, cfg, model_args, pruning, device,
           ts_range):
    return {"version": ck.VERSION, "model": _cpu_sd(model), "ema": _cpu_sd(ema.shadow) if ema
            else None, "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
            "step_in_epoch": step_in_epoch, "config": cfg, "model_args": model_args,
            "pruning": pruning, "rng": _rng_state(device), "ts_range": list(ts_range)}


def _cpu_sd(model):
    # contiguous: a channels-last model's weights are stored in the standard layout
    return {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}


def _sample_grid(cfg, opts, model, diffusion, device, path, autocast):
    import torchvision.utils as vutils
    n = cfg["training"]["grid_samples"]
    d = cfg["data"]
    # own generators: drawing a grid must not move the training RNG (exact resume)
    g = torch.Generator(device="cpu").manual_seed(cfg["sampling"]["seed"])
    noise = torch.randn(n, d["channels"], d["image_size"], d["image_size"], generator=g)
    step_gen = torch.Generator(device=device).manual_seed(cfg["sampling"]["seed"] + 1)
    was_training = model.training
    model.eval()
    from runners.sample import sampler_settings
    x = sample_images(model, diffusion, noise.to(device), generator=step_gen, autocast=autocast,
                      **sampler_settings(cfg, opts))
    model.train(was_training)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    vutils.save_image(inverse_data_transform(x.float().cpu()), path,
                      nrow=int(math.sqrt(n)) or 1)
