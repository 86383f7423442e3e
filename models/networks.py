"""The backbones a config can name (model.type): the DDIM UNet ('simple', the default) and the
DiT ('dit'). A network is always rebuilt from its keyword arguments (``model_args``, stored in
every checkpoint); a DiT's carry ``arch: dit``, a UNet's carry no ``arch`` (checkpoints written
before the DiT existed load unchanged)."""
from models.dit import Attention, DiT
from models.unet import UNet

def is_dit(model_args):
    return (model_args or {}).get("arch") == "dit"


def build_network(model_args):
    """A fresh dense network (random weights) of the stored architecture."""
    return DiT(**model_args) if is_dit(model_args) else UNet(**model_args)


def unprunable_layers(model):
    """Layers whose outputs no structural pruning may shrink: the UNet's output convolution;
    in a DiT every layer that writes the token width (patch embedding, the adaLN modulations,
    the timestep MLP's output, the final projection), so only heads and MLP widths prune."""
    if isinstance(model, DiT):
        return [model.x_embedder.proj, model.t_embedder[2], model.final_layer.linear,
                model.final_layer.adaLN_modulation[1],
                *(b.adaLN_modulation[1] for b in model.blocks)]
    return [model.conv_out]


def transformer_blocks(model):
    """{index: name prefix} of a DiT's blocks, the units depth pruning removes (empty for a
    UNet)."""
    if not isinstance(model, DiT):
        return {}
    return {i: f"blocks.{i}." for i in range(len(model.blocks))}


def attention_heads(model):
    """{name of an attention's qkv Linear: (heads, head width)} of a DiT (empty for a UNet,
    whose attention is one head over all channels and prunes by channel)."""
    if not isinstance(model, DiT):
        return {}
    return {f"{n}.qkv": (m.num_heads, m.head_dim) for n, m in model.named_modules()
            if isinstance(m, Attention)}
