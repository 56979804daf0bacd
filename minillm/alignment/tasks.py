"""A preference task whose preferred answer a program checks, small enough to align a tiny model in
seconds: reverse a word.

    prompt "cab=", the preferred answer "bac" (the letters reversed), a rejected one "cab" or "bec"

Words are WORD_LENGTH letters of ALPHABET whose first and last letters differ (so the copy is never the
reversal). A word is held out when the sum of its letters' ranks is a multiple of 5 (~1 in 5): the
"heldout" split has only those prompts, "train" only the others, so held-out figures are on prompts no
training record had. Every reply ends with the end marker END ("\n"; the character tokenizer has no EOS),
and a sampled answer is the text before it.

    tok = task_tokenizer()
    records = preference_records(400, seed=0)                   # {"prompt", "chosen", "rejected"}
    model = sft_starting_point(tok, seed=0)                     # about half its samples reverse the word
    rule_rate(model, tok, task_prompts(100, seed=1, split="heldout"), samples=4, seed=0)

The SFT starting point is a tiny decoder trained from scratch in-process on sft_records: for each
prompt the reversal with probability correct_rate, else the word copied unreversed. It learns both
modes, so its temperature-1 samples satisfy the rule at about correct_rate (0.5 by default; the figure
for the default seed is in benchmarks/results/alignment.json), leaving
room for a reward model, best-of-n, DPO or PPO to improve it. satisfies(prompt, answer) is the check.
"""
import numpy as np

from .. import functional as F
from ..generate import generate
from ..models import DecoderLM, ModelConfig
from ..optim import AdamW, param_groups
from ..sft_data import encode_record, pad_batch
from ..tokenizers import CharTokenizer

ALPHABET = "abcdef"
WORD_LENGTH = 3
SEP, END = "=", "\n"
SPLITS = ("train", "heldout")
MODEL = dict(block_size=16, n_layer=2, n_head=2, n_embd=32, d_ff=64, positions="rope", norm="rmsnorm", activation="swiglu",
             bias=False)                            # a Llama layout: its LoRA adapters save in peft's format


def task_tokenizer():
    """The character tokenizer of the task: the letters, the separator and the end marker."""
    return CharTokenizer("".join(sorted(ALPHABET + SEP + END)))


def is_heldout(word):
    return sum(ALPHABET.index(c) for c in word) % 5 == 0


def _words(n, seed, split):
    if split not in SPLITS:
        raise ValueError(f"tasks: split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    words = []
    while len(words) < n:
        word = "".join(rng.choice(list(ALPHABET), WORD_LENGTH))
        if word[0] != word[-1] and is_heldout(word) == (split == "heldout"):
            words.append(word)
    return words


def task_prompts(n, seed=0, split="train"):
    """n prompts "abc=" of the split (drawn with replacement, by seed)."""
    return [w + SEP for w in _words(n, seed, split)]


def satisfies(prompt, answer):
    """True when answer (the reply's text before the end marker) is the prompt's word reversed."""
    word = prompt[:-len(SEP)] if prompt.endswith(SEP) else prompt
    return answer == word[::-1]


def _wrong(word, rng):
    """A wrong answer: the word copied (the starting point's mistake), or the reversal with one letter changed."""
    if rng.random() < 0.5:
        return word
    answer = list(word[::-1])
    i = int(rng.integers(len(answer)))
    answer[i] = rng.choice([c for c in ALPHABET if c != answer[i]])
    return "".join(answer)


def preference_records(n, seed=0, split="train"):
    """n records {"prompt": "abc=", "chosen": "cba\\n", "rejected": a wrong answer + "\\n"}."""
    rng = np.random.default_rng([seed, 7])
    return [{"prompt": w + SEP, "chosen": w[::-1] + END, "rejected": _wrong(w, rng) + END}
            for w in _words(n, seed, split)]


def sft_records(n, seed=0, correct_rate=0.5, split="train"):
    """n records {"prompt", "completion"}: the reversal with probability correct_rate, else the copy."""
    rng = np.random.default_rng([seed, 8])
    return [{"prompt": w + SEP, "completion": (w[::-1] if rng.random() < correct_rate else w) + END}
            for w in _words(n, seed, split)]


def sft_starting_point(tokenizer=None, seed=0, steps=1500, correct_rate=0.5, batch_size=32, lr=5e-3):
    """A tiny DecoderLM (MODEL) trained from scratch on sft_records(2000, seed, correct_rate), in eval mode.
    Deterministic for a seed; 5-20 s on two cores (fewer steps give a cruder model, for tests: below ~1500
    it also makes answers that are neither the copy nor the reversal)."""
    tokenizer = tokenizer or task_tokenizer()
    model = DecoderLM(ModelConfig(vocab_size=tokenizer.vocab_size, **MODEL), rng=np.random.default_rng([seed, 9]))
    examples = [encode_record(r, tokenizer, "sft_records") for r in sft_records(2000, seed, correct_rate)]
    optimizer = AdamW(param_groups(model, 0.0), lr)
    rng = np.random.default_rng([seed, 10])
    model.train()
    for _ in range(steps):
        batch = pad_batch([examples[i] for i in rng.choice(len(examples), batch_size, replace=False)])
        logits = model(batch["ids"])
        B, T, V = logits.shape
        loss = F.cross_entropy(logits.reshape(B * T, V), batch["targets"].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def sample_answers(model, tokenizer, prompts, samples=1, seed=0, temperature=1.0, max_new_tokens=None):
    """[[answer text] * samples per prompt]: sampled replies, each cut at the end marker."""
    end = tokenizer.encode(END)[0]
    max_new = max_new_tokens or WORD_LENGTH + 2
    rows = [tokenizer.encode(p) for p in prompts for _ in range(samples)]
    out = generate(model, rows, max_new, temperature=temperature, seed=seed, stop_tokens={end})
    texts = [tokenizer.decode(ids) for ids in out]
    return [texts[i * samples:(i + 1) * samples] for i in range(len(prompts))]


def rule_rate(model, tokenizer, prompts, samples=1, seed=0, temperature=1.0):
    """The fraction of sampled answers (samples per prompt, at temperature) that satisfy the rule."""
    answers = sample_answers(model, tokenizer, prompts, samples, seed, temperature)
    hits = [satisfies(p, a) for p, row in zip(prompts, answers) for a in row]
    return sum(hits) / len(hits)
