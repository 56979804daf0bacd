"""Long-context evaluations: loss by position, passkey retrieval, and a small "lost in the middle" probe.

    rows = loss_by_position(model, ids, length=1024, buckets=8)      # [{"start", "end", "loss"}, ...]
    table = passkey_retrieval(model, tokenizer, lengths=[256, 512], depths=[0, 0.5, 1])
    table = lost_in_the_middle(model, tokenizer, n_pairs=8)

with_context(model, length, rope_scaling) gives the same weights with a longer context (and a RoPE
scaling), so a loss-by-position curve shows what each scaling does beyond the trained length.
Passkey (Mohtashami & Jaggi 2023): a five-digit number hidden at a chosen depth of repeated filler,
then "What is the pass key? The pass key is"; a trial counts when greedy decoding gives the number.
Lost in the middle (Liu et al. 2023, its key-value retrieval form): n "key: value" lines, then a
query for one of them; accuracy by the position of the line asked for.
"""
import numpy as np

from .autograd import no_grad

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def with_context(model, length, rope_scaling=None):
    """A DecoderLM with model's weights, block_size = length and rope_scaling (a HF-style dict or None)."""
    from dataclasses import replace
    from .models import DecoderLM
    c = model.config
    if length > c.block_size and c.positions == "learned":
        raise ValueError(f"a model with learned positions has {c.block_size} of them; it cannot run at {length}")
    config = replace(c, block_size=max(length, c.block_size), rope_scaling=rope_scaling or c.rope_scaling)
    longer = DecoderLM(config, rng=np.random.default_rng(0), dtype=model.norm_f.weight.dtype)
    longer.load_state_dict(model.state_dict())
    longer.eval()
    return longer


def loss_by_position(model, ids, length=None, buckets=8, batch_size=8):
    """Mean next-token loss (nats) per bucket of positions 0..length-1, over the windows of ids.

    ids are cut into consecutive windows of `length` (default: the model's context) tokens; each
    window's loss at position t is averaged with the others' at t; positions are then grouped in
    `buckets` equal ranges. Returns [{"start", "end", "loss"}] (end exclusive)."""
    length = length or model.config.block_size
    if length > model.config.block_size:
        raise ValueError(f"loss_by_position: length {length} is more than the model's context "
                         f"{model.config.block_size} (with_context gives a longer one)")
    n = (len(ids) - 1) // length
    if n < 1:
        raise ValueError(f"loss_by_position: needs more than {length + 1} tokens, got {len(ids)}")
    if not 1 <= buckets <= length:
        raise ValueError(f"loss_by_position: buckets must be in [1, {length}], got {buckets}")
    ids = np.asarray(ids, dtype=np.int64)
    x_all = ids[:n * length].reshape(n, length)
    y_all = ids[1:n * length + 1].reshape(n, length)
    total = np.zeros(length)
    model.eval()
    with no_grad():
        for i in range(0, n, batch_size):
            x, y = x_all[i:i + batch_size], y_all[i:i + batch_size]
            logits = model.infer(x).astype(np.float64)                        # (b, L, V)
            m = logits.max(axis=-1, keepdims=True)
            lse = (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[..., 0]
            picked = np.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
            total += (lse - picked).sum(axis=0)
    per_position = total / n
    edges = np.linspace(0, length, buckets + 1).round().astype(int)
    return [{"start": int(a), "end": int(b), "loss": round(float(per_position[a:b].mean()), 4)}
            for a, b in zip(edges[:-1], edges[1:])]


def _greedy(model, prompt_ids, steps):
    """Greedy continuation of one prompt by `steps` tokens (through a KV cache)."""
    from .generate import generate
    return generate(model, [list(prompt_ids)], steps, temperature=0)[0]


def passkey_prompt(tokenizer, length, depth, key):
    """Token ids of about `length` tokens: filler with "The pass key is <key>. Remember it." at depth
    (0 = the start, 1 = just before the question), then the question."""
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    question = "What is the pass key? The pass key is "
    unit = tokenizer.encode(FILLER)
    room = max(0, length - len(tokenizer.encode(needle)) - len(tokenizer.encode(question)))
    filler = (unit * (room // max(1, len(unit)) + 1))[:room]
    cut = int(round(depth * len(filler)))
    text_ids = filler[:cut] + tokenizer.encode(needle) + filler[cut:] + tokenizer.encode(question)
    return text_ids


def passkey_retrieval(model, tokenizer, lengths, depths=(0.0, 0.25, 0.5, 0.75, 1.0), trials=3, seed=0):
    """[{"length", "depth", "accuracy"}]: the fraction of trials whose greedy answer starts with the key."""
    rng = np.random.default_rng(seed)
    rows = []
    for length in lengths:
        for depth in depths:
            hits = 0
            for _ in range(trials):
                key = str(rng.integers(10_000, 100_000))
                ids = passkey_prompt(tokenizer, length, depth, key)
                steps = len(tokenizer.encode(key))
                if len(ids) + steps > model.config.block_size:
                    raise ValueError(f"passkey: a prompt of {len(ids)} tokens and its answer do not fit the "
                                     f"context {model.config.block_size} (ask for shorter --lengths)")
                hits += tokenizer.decode(_greedy(model, ids, steps)).strip().startswith(key)
            rows.append({"length": int(length), "depth": float(depth), "accuracy": hits / trials})
    return rows


def lost_in_the_middle(model, tokenizer, n_pairs=8, trials=3, seed=0):
    """[{"position", "accuracy"}]: retrieval of the value of the pair at each position of n_pairs."""
    rng = np.random.default_rng(seed)
    hits = np.zeros(n_pairs)
    for _ in range(trials):
        keys = [str(k) for k in rng.choice(np.arange(100, 1000), size=n_pairs, replace=False)]
        values = [str(v) for v in rng.integers(100, 1000, size=n_pairs)]
        lines = "".join(f"{k}: {v}\n" for k, v in zip(keys, values))
        for position in range(n_pairs):
            ids = tokenizer.encode(f"{lines}{keys[position]}: ")
            steps = len(tokenizer.encode(values[position]))
            if len(ids) + steps > model.config.block_size:
                raise ValueError(f"lost-in-the-middle: {n_pairs} pairs take {len(ids)} tokens, more than the "
                                 f"context {model.config.block_size} (ask for fewer pairs)")
            hits[position] += tokenizer.decode(_greedy(model, ids, steps)).strip().startswith(values[position])
    return [{"position": int(p), "accuracy": float(hits[p] / trials)} for p in range(n_pairs)]
