"""Extending a trained model's context: `minillm train --resume --block-size 4x` (position interpolation).

Position interpolation (Chen et al. 2023): a RoPE model trained on L positions is fine-tuned at k L with
its positions divided by k (rope_scaling {"rope_type": "linear", "factor": k}), so every angle it sees
is one it saw in training; a short fine-tune at the longer length then adapts it. A model already
linearly scaled by f gets f k. ALiBi and sinusoidal models only get the longer context (their
positions have no table to outgrow); learned position tables would need new rows, so they are refused.
"""
import math


def parse_block_size(text):
    """'256' -> ("tokens", 256); '4x' -> ("times", 4.0). Raises ValueError on anything else."""
    text = str(text).strip().lower()
    try:
        if text.endswith("x"):
            factor = float(text[:-1])
            if not math.isfinite(factor) or factor < 1:
                raise ValueError
            return "times", factor
        value = int(text)
        if value < 1:
            raise ValueError
        return "tokens", value
    except ValueError:
        raise ValueError(f"--block-size must be a positive int (tokens) or a factor such as 4x, got {text!r}") from None


def extended_model(config, spec):
    """{"block_size", "rope_scaling"} of config (a ModelConfig) extended as spec (parse_block_size) says."""
    kind, value = spec
    old = config.block_size
    new = int(round(old * value)) if kind == "times" else value
    if new < old:
        raise ValueError(f"--block-size {new} is shorter than the checkpoint's context {old}; it only extends")
    if new == old:
        return {"block_size": old, "rope_scaling": config.rope_scaling}
    if config.positions == "learned":
        raise ValueError("--block-size: a model with learned positions has a table of block_size rows; only RoPE, "
                         "ALiBi and sinusoidal models can be extended")
    if config.positions != "rope":
        return {"block_size": new, "rope_scaling": config.rope_scaling}
    factor = new / old
    scaling = dict(config.rope_scaling or {"rope_type": "linear", "factor": 1.0})
    kind_now = scaling.get("rope_type") or scaling.get("type")
    if kind_now != "linear":
        raise ValueError(f"--block-size: the model's RoPE is scaled by {kind_now!r}; position interpolation "
                         "extends plain or linearly scaled RoPE only")
    scaling = {"rope_type": "linear", "factor": float(scaling.get("factor", 1.0)) * factor}
    return {"block_size": new, "rope_scaling": scaling}
