"""The quantization workflow: a quantized copy of a float checkpoint, and loading one back.

    model, (before, after) = quantize_checkpoint("out/run", "out/run-q4", "q4_0")
    model, tokenizer = load_quantized("out/run-q4")

The quantized modules themselves and quantize_model are in minillm/nn/quantized.py; a quantized
checkpoint is an ordinary checkpoint whose config.json names the scheme, so build_model (and with
it generate and eval) loads it like any other (minillm/checkpoint.py).
"""
import os

from .checkpoint import CheckpointError, build_model, checkpoint_leftovers, has_checkpoint, load_checkpoint, save_checkpoint
from .files import DirectoryLock
from .nn.quantized import quantize_model


def load_quantized(directory):
    """(model, tokenizer) of a quantized checkpoint; a float checkpoint is an error."""
    checkpoint = load_checkpoint(directory)
    if not checkpoint["config"].get("quantization"):
        raise CheckpointError(f"{directory!r} is a float checkpoint, not a quantized one; make one with "
                              f"`minillm quantize --ckpt {directory} --scheme q8_0 --out DIR`")
    return build_model(checkpoint)


def quantize_checkpoint(src, out, scheme, overwrite=False, progress=False):
    """Quantize the float checkpoint in src into a new checkpoint in out. Returns (model, sizes), sizes
    being the bytes of model.safetensors before and after."""
    if os.path.abspath(src) == os.path.abspath(out):
        raise CheckpointError("quantize: --out must be a new directory, not the checkpoint being quantized")
    checkpoint = load_checkpoint(src)
    if (has_checkpoint(out) or checkpoint_leftovers(out)) and not overwrite:   # checked again under the lock
        raise CheckpointError(f"quantize: {out!r} already holds a checkpoint; pass --overwrite to replace it")
    if checkpoint["config"].get("quantization"):
        raise CheckpointError(f"{src!r} is already quantized ({checkpoint['config']['quantization']['scheme']}); "
                              "quantize the float checkpoint it came from")
    model, tokenizer = build_model(checkpoint)
    quantize_model(model, scheme, progress=progress)
    state = {"step": checkpoint["state"].get("step"), "quantized_from": os.path.abspath(src), "scheme": scheme}
    with DirectoryLock(out):                   # one writer; save_checkpoint commits the whole checkpoint at once
        if (has_checkpoint(out) or checkpoint_leftovers(out)) and not overwrite:
            raise CheckpointError(f"quantize: {out!r} already holds a checkpoint; pass --overwrite to replace it")
        written = save_checkpoint(out, model, tokenizer, state=state)
    sizes = tuple(os.path.getsize(os.path.join(d, "model.safetensors")) for d in (checkpoint["directory"], written))
    return model, sizes
