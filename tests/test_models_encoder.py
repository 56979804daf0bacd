"""The encoder-only model (BERT) and the encoder-decoder (T5-style): gradients of their losses,
padding that changes nothing, cached decoding equal to the teacher-forced pass, pooling as
sentence-transformers defines it, and configs of every family through one entry point."""
import numpy as np
import pytest

from minillm import models
from minillm.autograd import no_grad
from minillm.models import EncoderConfig, EncoderDecoderModel, EncoderModel, Seq2SeqConfig
from minillm.models.pooling import cosine_matrix, l2_normalize, pool, pooling_modes
from minillm.testing import gradcheck_module

TINY_BERT = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=6, d_ff=8, init_std=0.3)
TINY_T5 = dict(vocab_size=9, block_size=8, n_layer=1, n_decoder_layer=2, n_head=2, n_embd=6, d_ff=8, init_std=0.3,
               num_buckets=6, max_distance=8)


GRAD_BERT = dict(TINY_BERT, n_layer=1, n_embd=4, d_ff=4)
GRAD_T5 = dict(TINY_T5, n_decoder_layer=1, n_embd=4, d_ff=4, vocab_size=7, num_buckets=4)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_mlm_loss_gradcheck(norm_position):
    rng = np.random.default_rng(0)
    model = EncoderModel(EncoderConfig(**GRAD_BERT, norm_position=norm_position), rng=rng)
    ids = rng.integers(0, 11, size=(2, 5))
    labels = np.full((2, 5), -100)
    labels[0, 1], labels[1, 3], labels[1, 0] = 4, 7, 2
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    gradcheck_module(model, [ids, labels], forward=lambda m, x, y: m(x, y, attention_mask=mask)[1])


def test_mlm_loss_is_the_cross_entropy_of_the_labelled_positions_only():
    rng = np.random.default_rng(1)
    model = EncoderModel(EncoderConfig(**TINY_BERT), rng=rng)
    ids = rng.integers(0, 11, size=(2, 6))
    labels = np.full((2, 6), -100)
    labels[0, 2], labels[1, 5] = 3, 9
    with no_grad():
        logits = model(ids).data                                             # (B, T, V)
        picked, loss = model(ids, labels)
    rows = logits.reshape(-1, 11)[[2, 11]]
    np.testing.assert_allclose(picked.data, rows, rtol=1e-5, atol=1e-6)
    logp = rows - np.log(np.exp(rows).sum(-1, keepdims=True))
    np.testing.assert_allclose(float(loss.data), -(logp[0, 3] + logp[1, 9]) / 2, rtol=1e-5)


def test_a_padded_batch_gives_each_row_what_it_gets_alone():
    rng = np.random.default_rng(2)
    model = EncoderModel(EncoderConfig(**TINY_BERT), rng=rng)
    rows = [rng.integers(1, 11, size=n) for n in (3, 7, 5)]
    batch = np.zeros((3, 7), np.int64)
    mask = np.zeros((3, 7), bool)
    for i, r in enumerate(rows):
        batch[i, :len(r)], mask[i, :len(r)] = r, True
    with no_grad():
        together = model.encode(batch, attention_mask=mask).data
        for i, r in enumerate(rows):
            np.testing.assert_allclose(together[i, :len(r)], model.encode(r[None]).data[0], rtol=1e-5, atol=1e-6)


def test_pooling_modes_match_their_definitions():
    rng = np.random.default_rng(3)
    h = rng.standard_normal((2, 4, 3))
    mask = np.array([[1, 1, 0, 0], [0, 1, 1, 1]])
    np.testing.assert_allclose(pool(h, mask, "mean")[0], h[0, :2].mean(0))
    np.testing.assert_allclose(pool(h, mask, "mean")[1], h[1, 1:].mean(0))
    np.testing.assert_allclose(pool(h, mask, "max")[1], h[1, 1:].max(0))
    np.testing.assert_allclose(pool(h, mask, "cls")[1], h[1, 1])                 # the first real token
    np.testing.assert_allclose(pool(h, mask, "lasttoken")[0], h[0, 1])
    np.testing.assert_allclose(pool(h, mask, "mean_sqrt_len_tokens")[0], h[0, :2].sum(0) / np.sqrt(2))
    both = pool(h, mask, ("mean", "cls"))                                         # concatenated cls first
    np.testing.assert_allclose(both[:, :3], pool(h, mask, "cls"))
    e = l2_normalize(both)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0)
    np.testing.assert_allclose(np.diag(cosine_matrix(both)), 1.0)


def test_pooling_config_keys_as_sentence_transformers_writes_them():
    assert pooling_modes({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}) == ("mean",)
    assert pooling_modes({"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True}) == ("cls", "max")
    assert pooling_modes({"pooling_mode": "cls"}) == ("cls",)
    assert pooling_modes({}) == ("mean",)
    with pytest.raises(ValueError, match="weightedmean"):
        pooling_modes({"pooling_mode_weightedmean_tokens": True})


@pytest.mark.parametrize("knobs", [dict(gated=True, activation="gelu_tanh", tie_embeddings=False,
                                                scale_decoder_output=False, head_dim=3),
                                   dict(positions="learned", norm="layernorm", norm_position="post", bias=True,
                                        scaled=True, activation="gelu")])
def test_seq2seq_loss_gradcheck_with_padding_on_both_sides(knobs):
    rng = np.random.default_rng(4)
    model = EncoderDecoderModel(Seq2SeqConfig(**GRAD_T5, **knobs), rng=rng)
    src = np.array([[3, 4, 5, 1, 0], [6, 5, 1, 0, 0]])                   # sources right-padded with pad (0)
    labels = np.array([[5, 4, 1], [6, 1, -100]])                          # targets padded with -100
    gradcheck_module(model, [src, labels], forward=lambda m, x, y: m(x, y)[1])


def test_cached_decoding_equals_the_teacher_forced_logits():
    rng = np.random.default_rng(5)
    model = EncoderDecoderModel(Seq2SeqConfig(**TINY_T5), rng=rng)
    src = np.array([[3, 4, 5, 1], [6, 7, 1, 0]])
    tgt_in = np.array([[0, 5, 4, 2], [0, 8, 3, 3]])
    with no_grad():
        full = model(src, decoder_input_ids=tgt_in).data
        memory = model.encode(src)
        kv = model.cross_kv(memory)
        caches = model.new_caches(2, 4)
        steps = [model.decode(tgt_in[:, t:t + 1], memory_kv=kv, src_mask=model.source_mask(src), caches=caches).data
                 for t in range(4)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-6)


def test_shift_right_starts_with_the_decoder_start_token_and_reads_ignore_as_pad():
    model = EncoderDecoderModel(Seq2SeqConfig(**TINY_T5), rng=np.random.default_rng(0))
    np.testing.assert_array_equal(model.shift_right(np.array([[5, 4, 1, -100]])), [[0, 5, 4, 1]])


def test_one_entry_point_builds_every_family_and_old_configs_stay_decoders():
    decoder = models.model_config_from_dict({"vocab_size": 10, "n_layer": 1, "n_embd": 8, "n_head": 2})
    assert isinstance(decoder, models.ModelConfig) and models.family_of(decoder) == "decoder"
    enc = models.model_config_from_dict(EncoderConfig(**TINY_BERT).to_dict())
    assert isinstance(models.build_model(enc, rng=np.random.default_rng(0)), EncoderModel)
    s2s = models.model_config_from_dict(Seq2SeqConfig(**TINY_T5).to_dict())
    assert isinstance(models.build_model(s2s, rng=np.random.default_rng(0)), EncoderDecoderModel)
    with pytest.raises(ValueError, match="family must be one of"):
        models.model_config_from_dict({"family": "diffusion"})
    with pytest.raises(ValueError, match="unknown keys"):
        models.model_config_from_dict({"family": "encoder", "n_kv_head": 2})


@pytest.mark.parametrize("family,knobs", [
    ("encoder", {}), ("encoder", dict(norm_position="pre", type_vocab_size=0, mlm_head=False, bias=False,
                                      norm="rmsnorm")),
    ("encoder_decoder", {}), ("encoder_decoder", dict(positions="learned", gated=True, bias=True, head_dim=5,
                                                      tie_embeddings=False, norm="layernorm", norm_position="post")),
])
def test_closed_form_parameter_counts_equal_the_built_models(family, knobs):
    """scaling/family_counts.py, which the memory check and `minillm scaling count` use."""
    from minillm.scaling.counts import count_parameters
    config = models.model_config_from_dict({"family": family, **(TINY_BERT if family == "encoder" else TINY_T5),
                                            **knobs})
    model = models.build_model(config, rng=np.random.default_rng(0))
    assert count_parameters(config) == model.num_parameters()
    assert count_parameters(config, exclude_embeddings=True) == model.num_parameters(exclude_embeddings=True)


def test_encoder_inputs_are_checked():
    model = EncoderModel(EncoderConfig(**TINY_BERT), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="more than the 8 positions"):
        model.encode(np.zeros((1, 9), np.int64))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model.encode(np.zeros((1, 4), np.int64), attention_mask=np.ones((1, 3)))
    with pytest.raises(ValueError, match="no position has a label"):
        model(np.zeros((1, 4), np.int64), np.full((1, 4), -100))
