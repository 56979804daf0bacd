"""What the training loop does differently for each model family: the tokenizer, the batches, the
sample shown at the end. The loop itself (minillm/train.py) is the same for all of them, because
every family's data has one contract,

    data.get_batch(split, batch_size, block_size, rng, rows=None) -> (x, y)
    model.loss(x, y) -> the mean loss (model(x, y) -> (logits, loss))

decoder          x, y: the token stream and the stream shifted by one (next-token prediction)
encoder          x: [CLS] window [SEP] with 15% of its tokens masked, y: their ids, -100 elsewhere (MLM)
encoder_decoder  x: sources (padded with <pad>), y: targets + </s> (padded with -100), from a
                 generated task (reverse, sort, add) or by span corruption of the token stream

train.task picks the seq2seq data: one of minillm.seq2seq_data.TASKS or "span_corruption".
"""
import numpy as np

from .data import TokenData, build_tokenizer as build_text_tokenizer
from .models import family_of
from .seq2seq_data import ALPHABETS, SPECIALS, TASKS, SpanCorruptionData, TaskData, num_sentinels, sentinel

SPAN_CORRUPTION = "span_corruption"


def build_tokenizer(model_spec, train_config, text):
    """The tokenizer a run trains with. model_spec: the model config (a dict or a config)."""
    from .tokenizers import CharTokenizer
    family = family_of(model_spec if isinstance(model_spec, dict) else model_spec)
    vocab = train_config.tokenizer_vocab_size or _get(model_spec, "vocab_size")
    if family != "encoder_decoder":
        return build_text_tokenizer(train_config.tokenizer, text, vocab)
    task = train_config.task or SPAN_CORRUPTION
    if task in TASKS:
        return CharTokenizer(sorted(ALPHABETS[task]), SPECIALS)
    if task != SPAN_CORRUPTION:
        raise ValueError(f"train.task must be one of {TASKS + (SPAN_CORRUPTION,)} for an encoder_decoder model, "
                         f"got {task!r}")
    if train_config.tokenizer != "char":
        raise ValueError("span_corruption trains on characters: set train.tokenizer to 'char'")
    n = num_sentinels(_get(model_spec, "block_size"), train_config.noise_density, train_config.mean_noise_span_length)
    return CharTokenizer(sorted(set(text)), SPECIALS + tuple(sentinel(k) for k in range(n)))


def _get(spec, name):
    return spec.get(name) if isinstance(spec, dict) else getattr(spec, name)


def make_data(model_config, train_config, tokenizer, token_ids):
    """The run's batches. token_ids(): the text's token ids (called only by the families that read
    the text: a generated task needs none)."""
    family = family_of(model_config)
    if family == "decoder":
        return TokenData(token_ids(), train_config.val_fraction)
    if family == "encoder":
        from .mlm import MLMData
        return MLMData(token_ids(), tokenizer, train_config.val_fraction, train_config.mlm_probability)
    _check_seq2seq_ids(model_config, tokenizer)
    task = train_config.task or SPAN_CORRUPTION
    if task in TASKS:
        return TaskData(task, tokenizer, train_config.task_max_len)
    return SpanCorruptionData(token_ids(), tokenizer, train_config.val_fraction, train_config.noise_density,
                              train_config.mean_noise_span_length)


def _check_seq2seq_ids(config, tokenizer):
    ids = tokenizer.special_tokens
    want = {"pad_token_id": "<pad>", "eos_token_id": "</s>", "decoder_start_token_id": "<pad>"}
    for key, token in want.items():
        if ids.get(token) != getattr(config, key):
            raise ValueError(f"the model's {key} is {getattr(config, key)} but the tokenizer's {token} is "
                             f"{ids.get(token)}; they must agree")


def describe_data(data):
    """One line about the run's data for the start of `minillm train`."""
    if hasattr(data, "describe"):
        return data.describe()
    return f"{len(data.splits['train']):,} train / {len(data.splits['val']):,} val tokens"


def sample(trainer, max_new_tokens=200):
    """What `minillm train` prints at the end for a non-decoder family: a few held-out predictions."""
    model, data, tok = trainer.model, trainer.data, trainer.tokenizer
    rng = np.random.default_rng(trainer.config.seed)
    if family_of(model.config) == "encoder":
        from .mlm import IGNORE
        x, y = data.get_batch("val", 1, model.config.block_size, rng)
        logits = model(x, y)[0].data
        pos = np.flatnonzero(y[0] != IGNORE)
        guesses = [f"{tok.id_to_token(int(y[0, p]))}->{tok.id_to_token(int(g))}"
                   for p, g in zip(pos, logits.argmax(-1))]
        return "masked token -> prediction: " + " ".join(guesses[:20])
    from .seq2seq import generate_seq2seq
    x, y = data.get_batch("val", 4, model.config.block_size, rng)
    lines = []
    outputs = generate_seq2seq(model, [[t for t in row if t != model.config.pad_token_id] for row in x],
                               max_new_tokens=min(max_new_tokens, model.config.block_size))
    for row, labels, out in zip(x, y, outputs):
        src = tok.decode([int(t) for t in row if t not in (model.config.pad_token_id, model.config.eos_token_id)])
        want = tok.decode([int(t) for t in labels if t >= 0 and t != model.config.eos_token_id])
        lines.append(f"{src!r} -> {tok.decode(out)!r} (expected {want!r})")
    return "\n".join(lines)
