"""The field's formats: Hugging Face diffusers UNet folders and safetensors files.

Our UNet (the DDIM codebase's "simple" network) is diffusers' ``UNet2DModel`` configured as
google/ddpm-cifar10-32 is (positional time embedding with ``flip_sin_to_cos=False,
freq_shift=1``, ``norm_eps=1e-6``, ``downsample_padding=0``, one attention head, attention's
1x1 convolutions as Linear layers), so a dense network converts by renaming keys (and
squeezing q/k/v/proj to 2-D). A pruned ticket cannot be a diffusers folder (diffusers' config
stores the dense widths), so it travels as safetensors with its torch-pruning history, our
model arguments and config in the file's metadata, and is rebuilt on a dense network, ours or a
``UNet2DModel``.

Nothing here reaches a hub: a diffusers folder is a local path (fetch one elsewhere with
``huggingface-cli download google/ddpm-cifar10-32 --local-dir DIR``).
"""
import json
import os
import re

from utils.errors import UserError

METADATA_KEY = "eb_diffusion"   # safetensors metadata: JSON of model_args, pruning, config
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
RESNET = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2",
          "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
# a diffusers config this network can be: key -> the value our UNet has
FIXED = {"act_fn": "silu", "attention_head_dim": None, "center_input_sample": False,
         "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
         "mid_block_scale_factor": 1, "norm_eps": 1e-6, "time_embedding_type": "positional"}
# keys a UNet2DModel config may hold that must keep diffusers' defaults (checked when present)
DEFAULTS_REQUIRED = {"resnet_time_scale_shift": "default", "add_attention": True,
                     "class_embed_type": None, "num_class_embeds": None,
                     "time_embedding_dim": None, "attn_norm_num_groups": None,
                     "downsample_type": "conv", "upsample_type": "conv"}


# why no diffusers class computes our DiT (tests/test_dit.py measures both differences)
DIT_NOT_EXPRESSIBLE = (
    "diffusers' DiTTransformer2DModel cannot compute this DiT: it embeds timesteps at "
    "frequencies 10000^(-k/127) where DiT uses 10000^(-k/128), and it is class-conditional "
    "(it adds a label embedding); export it with --to safetensors")


def diffusers_config(model_args):
    """The UNet2DModel config of our model arguments; a UserError for what it cannot express."""
    a = model_args
    if a.get("arch") == "dit":
        raise UserError(DIT_NOT_EXPRESSIBLE)
    if not a.get("resamp_with_conv", True):
        raise UserError("diffusers' UNet2DModel resamples with convolutions: a network with "
                        "model.resamp_with_conv false cannot be exported")
    widths = [a["ch"] * m for m in a["ch_mult"]]
    res = [a["resolution"] // 2 ** i for i in range(len(widths))]
    attn = [r in a["attn_resolutions"] for r in res]
    down = ["AttnDownBlock2D" if x else "DownBlock2D" for x in attn]
    up = ["AttnUpBlock2D" if x else "UpBlock2D" for x in reversed(attn)]
    return dict(FIXED, _class_name="UNet2DModel", sample_size=a["resolution"],
                in_channels=a["in_channels"], out_channels=a["out_ch"],
                block_out_channels=widths, layers_per_block=a["num_res_blocks"],
                down_block_types=down, up_block_types=up, norm_num_groups=a["gn_groups"],
                dropout=a["dropout"])


def model_args_of(hf, source):
    """Our UNet's model arguments from a diffusers config ``hf``; refuses, naming the key, what our
    network is not."""
    for key, want in {**FIXED, **DEFAULTS_REQUIRED}.items():
        if key in hf and hf[key] != want and not (key == "norm_eps" and
                                                          abs(hf[key] - want) < 1e-12):
            raise UserError(f"{source}: diffusers config {key} is {hf[key]!r}; this "
                            f"project's UNet has {want!r}")
    if hf.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise UserError(f"{source}: a {hf['_class_name']}, not a UNet2DModel")
    widths = list(hf["block_out_channels"])
    ch = widths[0]
    if any(w % ch for w in widths):
        raise UserError(f"{source}: block_out_channels {widths} are not multiples of the first")
    size = hf.get("sample_size")
    if isinstance(size, (list, tuple)):
        size = size[0]
    down = list(hf["down_block_types"])
    known = {"DownBlock2D", "AttnDownBlock2D"}
    if set(down) - known:
        raise UserError(f"{source}: down_block_types {down}: only {sorted(known)} are this "
                        f"project's UNet")
    up = [b.replace("Up", "Down") for b in reversed(hf["up_block_types"])]
    if up != down:
        raise UserError(f"{source}: up_block_types {hf['up_block_types']} do not mirror "
                        f"down_block_types {down}")
    args = dict(in_channels=hf["in_channels"], out_ch=hf["out_channels"], ch=ch,
                ch_mult=[w // ch for w in widths], num_res_blocks=hf["layers_per_block"],
                attn_resolutions=[size // 2 ** i for i, b in enumerate(down)
                                  if b.startswith("Attn")],
                dropout=float(hf.get("dropout", 0.0)), resolution=size,
                resamp_with_conv=True, gn_groups=hf["norm_num_groups"])
    return args


def _to_diffusers_key(key, n_levels):
    """A DDIM / our UNet parameter name -> the UNet2DModel one."""
    simple = {"temb.dense.0": "time_embedding.linear_1", "temb.dense.1": "time_embedding.linear_2",
              "norm_out": "conv_norm_out"}
    head, _, leaf = key.rpartition(".")
    for ours, theirs in simple.items():
        if head == ours:
            return f"{theirs}.{leaf}"
    m = re.fullmatch(r"(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(\w+)", head)
    if m:
        side, level, kind, j, part = m.groups()
        i = int(level) if side == "down" else n_levels - 1 - int(level)
        group = "resnets" if kind == "block" else "attentions"
        name = (RESNET if kind == "block" else ATTN)[part]
        return f"{side}_blocks.{i}.{group}.{j}.{name}.{leaf}"
    m = re.fullmatch(r"(down|up)\.(\d+)\.(downsample|upsample)\.conv", head)
    if m:
        side, level, what = m.groups()
        i = int(level) if side == "down" else n_levels - 1 - int(level)
        return f"{side}_blocks.{i}.{what}rs.0.conv.{leaf}"
    m = re.fullmatch(r"mid\.(block_1|attn_1|block_2)\.(\w+)", head)
    if m:
        which, part = m.groups()
        if which == "attn_1":
            return f"mid_block.attentions.0.{ATTN[part]}.{leaf}"
        return f"mid_block.resnets.{0 if which == 'block_1' else 1}.{RESNET[part]}.{leaf}"
    return key  # conv_in, conv_out


def _is_attn_linear(key):
    return re.search(r"\.attn(_1|\.\d+)\.(q|k|v|proj_out)\.weight$", key) is not None


def to_diffusers_state_dict(state_dict, n_levels):
    """Our state dict -> UNet2DModel's (attention 1x1 convs become Linear weights)."""
    out = {}
    for k, v in state_dict.items():
        out[_to_diffusers_key(k, n_levels)] = v[:, :, 0, 0] if _is_attn_linear(k) else v
    return out


def from_diffusers_state_dict(state_dict, model_args, source):
    """UNet2DModel's state dict -> ours, checked key by key against our network."""
    from models.unet import UNet
    n_levels = len(model_args["ch_mult"])
    ours = UNet(**model_args).state_dict()
    names = {_to_diffusers_key(k, n_levels): k for k in ours}
    missing = sorted(set(names) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(names))
    if missing or unexpected:
        raise UserError(f"{source}: weights do not match the config: "
                        f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} "
                        f"unexpected (e.g. {unexpected[:2]})")
    out = {}
    for theirs, k in names.items():
        v = state_dict[theirs]
        out[k] = v[:, :, None, None] if _is_attn_linear(k) else v
    return out


# --- files --------------------------------------------------------------------------------

def is_diffusers_folder(path):
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def load_diffusers_folder(path):
    """A local UNet2DModel folder -> (our state dict, our model arguments)."""
    from safetensors.torch import load_file
    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    args = model_args_of(hf, path)
    weights = os.path.join(path, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise UserError(f"{path}: no {WEIGHTS_NAME} (only safetensors weights are read: "
                        f"they cannot run code)")
    return from_diffusers_state_dict(load_file(weights), args, path), args


def load_safetensors(path):
    """A .safetensors file written by ``export_safetensors`` -> (state dict, model arguments,
    pruning record or None, config dict or None)."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # not a safetensors file
        raise UserError(f"{path}: not a readable safetensors file ({str(e)[:120]})")
    if METADATA_KEY not in meta:
        raise UserError(f"{path}: no '{METADATA_KEY}' metadata (model arguments): export it "
                        f"with earlybird_scripts/export.py")
    info = json.loads(meta[METADATA_KEY])
    sd = load_file(path)
    if info.get("format") == "diffusers":
        sd = from_diffusers_state_dict(sd, info["model_args"], path)
    return sd, info["model_args"], info.get("pruning"), info.get("config")


def export_diffusers(state_dict, model_args, out_dir, *, betas):
    """A dense network's weights -> a UNet2DModel folder (config.json + safetensors weights)
    with a DDPMScheduler config matching ``betas`` in scheduler/."""
    from safetensors.torch import save_file

    from utils.io import atomic_path, atomic_write_json
    config = diffusers_config(model_args)
    tensors = {k: v.contiguous() for k, v in
               to_diffusers_state_dict(state_dict, len(model_args["ch_mult"])).items()}
    os.makedirs(out_dir, exist_ok=True)
    with atomic_path(os.path.join(out_dir, WEIGHTS_NAME)) as tmp:
        save_file(tensors, tmp)
    atomic_write_json(os.path.join(out_dir, "config.json"), config)
    atomic_write_json(os.path.join(out_dir, "scheduler", "scheduler_config.json"),
                      scheduler_config(betas))
    return out_dir


def scheduler_config(betas):
    """DDPMScheduler's config for our schedule: the betas themselves (float64), eps-prediction,
    the DDPM sampler's fixed-large variance and clipping of x0 to [-1, 1]."""
    return {"_class_name": "DDPMScheduler", "num_train_timesteps": len(betas),
            "beta_schedule": "linear", "beta_start": float(betas[0]),
            "beta_end": float(betas[-1]), "trained_betas": [float(b) for b in betas],
            "variance_type": "fixed_large", "clip_sample": True, "prediction_type": "epsilon"}


def export_safetensors(state_dict, out_path, *, model_args, pruning=None, config=None):
    """A network (dense or pruned) -> one .safetensors file: its weights under our names,
    with model arguments, pruning history and config as metadata."""
    from safetensors.torch import save_file

    from utils.io import atomic_path
    sd = {k: v.contiguous() for k, v in state_dict.items()}
    info = {"format": "eb_diffusion", "model_args": model_args, "pruning": pruning,
            "config": config}
    with atomic_path(out_path) as tmp:
        save_file(sd, tmp, metadata={METADATA_KEY: json.dumps(info)})
    return out_path


def ticket_on_unet2d(path):
    """A pruned ticket's safetensors file -> a diffusers UNet2DModel of the ticket's widths:
    the dense UNet2DModel of its model arguments, its pruning history replayed with module
    names mapped, then its weights."""
    import torch
    import torch_pruning as tp
    from diffusers import UNet2DModel
    state_dict, args, pruning, _ = load_safetensors(path)
    model = UNet2DModel(**{k: v for k, v in diffusers_config(args).items()
                           if not k.startswith("_")}).eval()
    if pruning:
        n_levels = len(args["ch_mult"])
        history = [[_to_diffusers_key(name + ".x", n_levels)[:-2], out, idxs]
                   for name, out, idxs in pruning["history"]]
        x = torch.randn(1, args["in_channels"], args["resolution"], args["resolution"])
        dg = tp.DependencyGraph().build_dependency(
            model, example_inputs={"sample": x, "timestep": torch.ones(1)},
            forward_fn=lambda m, inputs: m(**inputs).sample)
        from models.pruning import _gn_group_sizes, fix_groupnorms
        gn_sizes = _gn_group_sizes(model)
        dg.load_pruning_history(history)
        fix_groupnorms(model, gn_sizes)
        for m in model.modules():  # widths diffusers keeps as attributes follow the pruning
            if hasattr(m, "to_q") and hasattr(m, "scale"):  # one head
                m.scale = m.to_q.out_features ** -0.5
            if hasattr(m, "channels") and isinstance(getattr(m, "conv", None), torch.nn.Conv2d):
                m.channels, m.out_channels = m.conv.in_channels, m.conv.out_channels
    sd = to_diffusers_state_dict(state_dict, len(args["ch_mult"]))
    model.load_state_dict(sd, strict=True)
    return model
