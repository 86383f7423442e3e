"""fast.cuda_graph: the whole training step (forward, backward, clipping, optimizer, EMA, the
non-finite counters and the per-quartile losses) captured once as a CUDA graph and replayed, so a
small ticket's step costs its device time, not ~1,000 kernel launches from the host
(docs/gpu.md).

What makes ``train_step`` capturable: every per-step value lives on the device (the learning
rate as the fused Adam's tensor ``lr``, the EMA decay from a device counter, the non-finite
counters updated in place), the batch is copied into one static buffer, the random draws
(timesteps, noise) use the CUDA generator (graph-safe: each replay advances its offset as an
eager step would), and nothing reads the host. The first ``warmup`` steps run eagerly on a side
stream (they are real steps of the run), the next full batch is captured and replayed, and every
later full batch replays the graph; a partial last batch runs eagerly and is never captured (a
graph of the partial shape would send every full batch after it down the eager path). Capture
uses the thread-local error mode, so a DataLoader's pin-memory thread allocating host memory
meanwhile is not an error. On the CPU the same graph-safe step runs eagerly, which the tests
compare with the ordinary step; they drive the capture branch with CPU stand-ins for the stream
and the graph (``_side_stream``, ``_capture``).
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
                 grad_accum, device, full_batch=None, warmup=3):
        self.run, self.device, self.warmup = run, device, warmup
        self.full_batch = full_batch        # the only batch size captured (None: any)
        self.enabled = device.type == "cuda"
        restore_graph_safe(run.optimizer)
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
        if not self.enabled or (self.full_batch and x.shape[0] != self.full_batch) or \
                (self.static_x is not None and x.shape != self.static_x.shape):
            return self._eager(x, quartiles)
        if self.graph is None:
            return self._warm_up_or_capture(x, quartiles)
        self.static_x.copy_(x)
        self.graph.replay()
        return self.out

    def _warm_up_or_capture(self, x, quartiles):
        self.calls += 1
        if self.calls <= self.warmup:
            return self._side_stream(lambda: self._eager(x, quartiles))
        self.static_x = x.clone()
        master = getattr(self.run, "master", None)
        if master is not None:
            # bf16_weights: the network's bf16 gradients go; the fp32 master's gradients are
            # preallocated buffers the step copies into, and must stay
            master.zero_grad()
        else:
            self.run.optimizer.zero_grad(set_to_none=True)  # allocated in the graph's pool
        self.graph, self.out = self._capture(lambda: self._eager(self.static_x, quartiles))
        self.graph.replay()  # capturing runs nothing: this is the step itself
        return self.out

    def _side_stream(self, fn):
        """Run ``fn`` on a side stream (the warm-up steps before a capture)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def _capture(self, fn):
        """(graph, its static outputs) of ``fn`` captured: thread-local error mode, so that
        another thread's CUDA calls (a DataLoader's pin-memory thread) do not break it."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = fn()
        return graph, out


GRAPH_SAFE_FLAGS = ("capturable", "fused", "foreach", "differentiable")


def restore_graph_safe(optimizer):
    """A graph-safe optimizer after ``load_state_dict`` of a state saved without the graph:
    loading sets each group's flags to the saved ones (capturable False, fused None, foreach
    True), which Adam's capture check refuses, and its per-parameter ``step`` may sit on the
    CPU. The constructor's flags (``defaults``, which loading leaves alone) are put back and
    each ``step`` is moved to its parameter's device, as the fused step reads it there."""
    for group in optimizer.param_groups:
        for k in GRAPH_SAFE_FLAGS:
            if k in optimizer.defaults:
                group[k] = optimizer.defaults[k]
        fused_or_capturable = group.get("fused") or group.get("capturable")
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            step = st.get("step")
            if fused_or_capturable and torch.is_tensor(step) and step.device != p.device:
                st["step"] = step.to(device=p.device, dtype=torch.float32)
