"""fast.cuda_graph: the whole training step (forward, backward, clipping, optimizer, EMA, the
non-finite counters and the per-quartile losses) captured once as a CUDA graph and replayed, so a
small ticket's step costs its device time, not ~1,000 kernel launches from the host
(docs/gpu.md).

What makes ``train_step`` capturable: every per-step value lives on the device (the learning
rate as the fused Adam's tensor ``lr``, the EMA decay from a device counter, the non-finite
counters updated in place), the batch is copied into one static buffer, the random draws
(timesteps, noise) use the CUDA generator (graph-safe: each replay advances its offset as an
eager step would), and nothing reads the host. The first ``warmup`` steps run eagerly on a side
stream (they are real steps of the run), the next one is captured and replayed, and every later
full batch replays the graph; a partial last batch runs eagerly. On the CPU the same graph-safe
step runs eagerly, which the tests compare with the ordinary step.
"""
import torch

from runners.step import train_step
from utils.errors import UserError


def check_graph_settings(cfg, world):
    """What a captured step cannot do, refused in one line."""
    if cfg.fast.compile:
        raise UserError("fast.cuda_graph and fast.compile: choose one (compile has its own "
                        "CUDA graphs, mode reduce-overhead)")
    if cfg.training.on_nonfinite == "skip":
        raise UserError("fast.cuda_graph needs training.on_nonfinite: stop (skip reads a flag "
                        "on the host every step)")
    if world > 1:
        raise UserError("fast.cuda_graph: one process per run for now (DDP's all-reduce is "
                        "not captured)")
    if cfg.optim.optimizer not in ("Adam", "AdamW"):
        raise UserError("fast.cuda_graph needs optim.optimizer Adam or AdamW (fused)")


class GraphStep:
    """step(x, lr, quartiles) -> (loss, grad norm), as ``train_step``, replayed from a CUDA
    graph on a GPU."""

    def __init__(self, run, *, sampler, diffusion, autocast, grad_clip, channels_last,
                 grad_accum, device, warmup=3):
        self.run, self.device, self.warmup = run, device, warmup
        self.kwargs = dict(sampler=sampler, diffusion=diffusion, autocast=autocast,
                           grad_clip=grad_clip, channels_last=channels_last,
                           grad_accum=grad_accum)
        # one device tensor for the learning rate, set before each step (a resume may have
        # loaded a float from the checkpoint's optimizer state); float64 on the CPU, where the
        # fused Adam then steps exactly as with a float lr; CUDA's fused Adam reads float32
        dtype = torch.float32 if device.type == "cuda" else torch.float64
        self.lr = torch.tensor(float(run.optimizer.param_groups[0]["lr"]), device=device,
                               dtype=dtype)
        for group in run.optimizer.param_groups:
            group["lr"] = self.lr
        if run.ema is not None:
            run.ema.make_graph_safe(device)
        self.graph, self.static_x, self.out, self.calls = None, None, None, 0

    def _eager(self, x, quartiles):
        return train_step(self.run, x, quartiles=quartiles, **self.kwargs)

    def __call__(self, x, lr, quartiles=None):
        self.lr.fill_(lr)
        if self.device.type != "cuda" or (self.static_x is not None and
                                          x.shape != self.static_x.shape):
            return self._eager(x, quartiles)
        if self.graph is None:
            return self._warm_up_or_capture(x, quartiles)
        self.static_x.copy_(x)
        self.graph.replay()
        return self.out

    def _warm_up_or_capture(self, x, quartiles):
        self.calls += 1
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        if self.calls <= self.warmup:
            with torch.cuda.stream(side):
                out = self._eager(x, quartiles)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return out
        self.static_x = x.clone()
        self.run.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._eager(self.static_x, quartiles)
        self.graph.replay()  # capturing runs nothing: this is the step itself
        return self.out
