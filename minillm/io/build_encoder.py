"""An encoder-only or encoder-decoder model from named weights read out of a file (io/hf_bert.py,
io/hf_t5.py): every name and shape checked against the config before the model is returned, the
random init skipped (as io/build.py does for decoders), float32 weights kept as given."""
import numpy as np

from ..models import build_model
from ..nn import Dropout
from .build import _NoInit
from .errors import FormatError


def build_from_weights(config, weights, where):
    """The model of config (any family) holding weights {parameter name: float32 array}, in eval mode."""
    model = build_model(config, rng=_NoInit())
    for _, module in model.named_modules():
        if isinstance(module, Dropout):
            module.rng = np.random.default_rng()
    params = dict(model.named_parameters())
    missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    if missing or unexpected:
        raise FormatError(f"{where}: the tensors do not fit the model its config describes: "
                          f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}, "
                          f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
    for name, value in weights.items():
        if tuple(value.shape) != params[name].shape:
            raise FormatError(f"{where}: tensor {name} has shape {tuple(value.shape)}, the config needs "
                              f"{params[name].shape}")
        if not np.all(np.isfinite(value)):
            raise FormatError(f"{where}: tensor {name} holds NaN or infinity")
    for name, value in weights.items():
        params[name].data = value
    return model.eval()
