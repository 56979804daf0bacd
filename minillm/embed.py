"""Sentence embeddings with an encoder-only model: tokenize as BERT does ([CLS] text [SEP], cut to
the longest input), run the encoder on batches padded on the right with a key padding mask, pool
the real tokens' hidden states and L2-normalise (minillm/models/pooling.py).

    vectors = embed(model, tokenizer, ["A sentence.", "Another one."])     # (2, C) float32
    cosine_matrix(vectors)                                                  # (2, 2)

The pooling, normalisation and longest input default to what the model came with (a
sentence-transformers directory says them; model.embedding), else mean pooling, normalised, and
the model's context. Texts are sorted by length into batches (less padding), and the rows come
back in the order given; padding changes no row, so a batch gives what each text gives alone.
"""
import numpy as np

from .autograd import no_grad
from .models.pooling import cosine_matrix, l2_normalize, pool  # noqa: F401 (cosine_matrix re-exported)


def embedding_settings(model, pooling=None, normalize=None, max_length=None):
    """(pooling modes, normalize, max_length): the arguments, else the model's own, else the defaults."""
    own = getattr(model, "embedding", None) or {}
    modes = pooling or own.get("pooling") or ("mean",)
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    normalize = own.get("normalize", True) if normalize is None else bool(normalize)
    limit = model.config.block_size
    max_length = min(int(max_length or own.get("max_length") or limit), limit)
    return modes, normalize, max_length


def token_ids(tokenizer, text, max_length):
    """[CLS] + WordPiece ids + [SEP], the text's ids cut so the whole is at most max_length long."""
    specials = getattr(tokenizer, "special_tokens", {})
    if "[CLS]" not in specials or "[SEP]" not in specials:
        raise ValueError("embed: the tokenizer has no [CLS] and [SEP] tokens; a BERT-style (WordPiece) tokenizer "
                         "is needed")
    if max_length < 2:
        raise ValueError(f"embed: max_length {max_length} leaves no room for [CLS] and [SEP]")
    return [specials["[CLS]"]] + tokenizer.encode_ordinary(text)[:max_length - 2] + [specials["[SEP]"]]


def embed(model, tokenizer, texts, pooling=None, normalize=None, batch_size=32, max_length=None):
    """(len(texts), C * len(pooling modes)) float32 sentence embeddings (see the module docstring)."""
    if isinstance(texts, str):
        raise TypeError("embed: texts must be a list of str, not one str")
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("embed: every text must be a str")
    if getattr(model.config, "family", "decoder") != "encoder":
        raise ValueError("embed: the model is not an encoder-only (BERT-style) model")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"embed: batch_size must be a positive int, got {batch_size!r}")
    modes, normalize, max_length = embedding_settings(model, pooling, normalize, max_length)
    ids = [token_ids(tokenizer, t, max_length) for t in texts]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out = [None] * len(ids)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                L = max(len(ids[i]) for i in rows)
                batch = np.full((len(rows), L), model.config.pad_token_id, np.int64)
                mask = np.zeros((len(rows), L), bool)
                for r, i in enumerate(rows):
                    batch[r, :len(ids[i])] = ids[i]
                    mask[r, :len(ids[i])] = True
                hidden = model.encode(batch, attention_mask=mask).data                 # (b, L, C)
                vectors = pool(hidden, mask, modes)
                if normalize:
                    vectors = l2_normalize(vectors)
                for r, i in enumerate(rows):
                    out[i] = vectors[r]
    finally:
        model.train(was_training)
    width = model.config.n_embd * len(modes)
    return np.stack(out).astype(np.float32) if out else np.zeros((0, width), np.float32)
