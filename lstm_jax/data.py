"""Corpus loading, the d2l vocabulary and d2l's two minibatch schemes.

Everything here follows d2l 0.x (the edition whose LSTM chapter we port) token
for token, so perplexities are comparable with the book's. Randomness comes
from an explicit ``numpy.random.Generator``: the caller derives it from the
run's seed and the epoch, so a run is a function of its config.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib.resources
import json
import os
import re
import tempfile
import urllib.request
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from lstm_jax.errors import UserError

TIME_MACHINE_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
UNK = "<unk>"


# --------------------------------------------------------------------------
# Getting the text
# --------------------------------------------------------------------------


def sha1_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def builtin_corpus_path() -> str:
    """The Time Machine as shipped inside the package (so runs work offline)."""
    return str(importlib.resources.files("lstm_jax") / "corpora" / "timemachine.txt")


def download(url: str, sha1: str | None, cache_dir: str) -> str:
    """Fetch ``url`` into ``cache_dir`` once, verifying its SHA-1.

    The file is written to a temporary name and renamed only after the hash
    matches, so an interrupted or corrupt download never poisons the cache.
    """
    name = os.path.basename(url.rstrip("/").split("?")[0]) or "corpus.txt"
    os.makedirs(cache_dir, exist_ok=True)
    target = os.path.join(cache_dir, f"{sha1[:12]}-{name}" if sha1 else name)
    if os.path.exists(target) and (sha1 is None or sha1_of(target) == sha1):
        return target
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".download-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while block := resp.read(1 << 20):
                out.write(block)
        got = sha1_of(tmp)
        if sha1 is not None and got != sha1:
            raise UserError(
                f"download of {url} has sha1 {got}, expected {sha1}; "
                "check config.data.url and config.data.sha1"
            )
        os.replace(tmp, target)
    except OSError as e:  # URLError is an OSError
        raise UserError(f"cannot download {url}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def resolve_corpus(path: str | None, url: str | None, sha1: str | None, cache_dir: str) -> str:
    """Which file to read: an explicit path, a download, or the built-in book."""
    if path and url:
        raise UserError("set config.data.path or config.data.url, not both")
    if url:
        return download(url, sha1, cache_dir)
    if path:
        if not os.path.isfile(path):
            raise UserError(f"corpus file {path} does not exist (config.data.path)")
        if sha1 is not None and sha1_of(path) != sha1:
            raise UserError(f"corpus file {path} does not match config.data.sha1={sha1}")
        return path
    builtin = builtin_corpus_path()
    if sha1_of(builtin) != TIME_MACHINE_SHA1:
        raise UserError(f"the built-in corpus {builtin} is corrupt (sha1 mismatch); reinstall lstm_jax")
    return builtin


# --------------------------------------------------------------------------
# Text -> tokens -> ids
# --------------------------------------------------------------------------


def read_lines(path: str) -> list[str]:
    """d2l's ``read_time_machine``: keep letters only, lower-cased, per line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError as e:
        raise UserError(f"corpus file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return [re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in lines]


def tokenize(lines: Sequence[str], token: str) -> list[list[str]]:
    if token == "char":
        return [list(line) for line in lines]
    if token == "word":
        return [line.split() for line in lines]
    raise UserError(f"config.data.token must be 'char' or 'word', got {token!r}")


@dataclasses.dataclass(frozen=True)
class Vocab:
    """d2l's Vocab: ``<unk>``, reserved tokens, then tokens by descending frequency.

    Ties keep first-occurrence order (``sorted`` is stable over a Counter's
    insertion order), exactly as d2l, so indices match the book's.
    """

    idx_to_token: tuple[str, ...]
    token: str = "char"  # how the text was split; predicting needs to know

    @classmethod
    def build(cls, tokens: Iterable[str], token: str = "char", min_freq: int = 0,
              reserved_tokens: Sequence[str] = ()) -> "Vocab":
        counts = collections.Counter(tokens)
        idx_to_token = [UNK, *reserved_tokens]
        seen = set(idx_to_token)
        for tok, freq in sorted(counts.items(), key=lambda kv: kv[1], reverse=True):
            if freq < min_freq:
                break
            if tok not in seen:
                idx_to_token.append(tok)
                seen.add(tok)
        return cls(tuple(idx_to_token), token)

    @property
    def token_to_idx(self) -> dict[str, int]:
        return self._index

    def __post_init__(self):
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.idx_to_token)})

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def ids(self, tokens: Iterable[str]) -> list[int]:
        """Token ids; unknown tokens map to ``<unk>`` (id 0) as in d2l."""
        return [self._index.get(t, 0) for t in tokens]

    def unknown(self, tokens: Iterable[str]) -> list[str]:
        """The distinct tokens this vocabulary lacks, in first-seen order."""
        return list(dict.fromkeys(t for t in tokens if t not in self._index))

    def to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.idx_to_token[int(i)] for i in ids]

    def split(self, text: str) -> list[str]:
        """Tokens of a prompt, split the way the training text was."""
        return list(text) if self.token == "char" else text.split()

    def join(self, tokens: Sequence[str]) -> str:
        return "".join(tokens) if self.token == "char" else " ".join(tokens)

    # JSON, never pickle: a vocabulary must load without executing code.
    def to_json(self) -> str:
        return json.dumps({"idx_to_token": list(self.idx_to_token), "token": self.token})

    @classmethod
    def from_json(cls, text: str) -> "Vocab":
        obj = json.loads(text)
        return cls(tuple(obj["idx_to_token"]), obj["token"])


class Corpus(NamedTuple):
    train: np.ndarray  # int32 token ids
    val: np.ndarray  # held-out ids that follow the training ids (may be empty)
    vocab: Vocab
    source: str


def load_corpus(path: str, token: str = "char", max_tokens: int = 10000,
                num_val: int = 0, min_freq: int = 0) -> Corpus:
    """d2l's ``load_corpus_time_machine`` plus an optional held-out tail.

    As in d2l the vocabulary is built from the whole text and the id stream is
    then cut to ``max_tokens`` (``<= 0`` keeps everything). The held-out split
    is the ``num_val`` tokens right after the training tokens.
    """
    lines = tokenize(read_lines(path), token)
    flat = [t for line in lines for t in line]
    if not flat:
        raise UserError(f"corpus file {path} has no letters in it: nothing to train on")
    vocab = Vocab.build(flat, token=token, min_freq=min_freq)
    ids = np.asarray(vocab.ids(flat), dtype=np.int32)
    n_train = len(ids) if max_tokens <= 0 else min(max_tokens, len(ids))
    if num_val > 0 and n_train + num_val > len(ids):
        n_train = len(ids) - num_val
        if n_train <= 0:
            raise UserError(f"corpus file {path} has {len(ids)} tokens, not enough for num_val={num_val}")
    return Corpus(ids[:n_train], ids[n_train:n_train + max(num_val, 0)], vocab, path)


# --------------------------------------------------------------------------
# Minibatches. An epoch is materialized as (num_batches, batch, steps) arrays
# so the training loop can hand whole blocks of it to one jitted scan.
# --------------------------------------------------------------------------


class Batches(NamedTuple):
    X: np.ndarray  # (num_batches, batch, steps) int32
    Y: np.ndarray  # X shifted by one token


def num_batches(num_tokens: int, batch_size: int, num_steps: int, random_iter: bool) -> int:
    """Minibatches per epoch for the worst-case random offset (shapes stay fixed)."""
    if random_iter:
        return ((num_tokens - num_steps) // num_steps) // batch_size
    return ((num_tokens - num_steps - 1) // batch_size) // num_steps


def check_enough(num_tokens: int, batch_size: int, num_steps: int, random_iter: bool, what: str):
    if num_batches(num_tokens, batch_size, num_steps, random_iter) < 1:
        raise UserError(
            f"{what} has {num_tokens} tokens, fewer than one minibatch of "
            f"batch_size={batch_size} x num_steps={num_steps} needs "
            f"(about {batch_size * num_steps + num_steps + 1}); use a longer text or smaller sizes"
        )


def seq_data_iter_sequential(corpus: np.ndarray, batch_size: int, num_steps: int,
                             rng: np.random.Generator) -> Batches:
    """d2l's sequential partitioning: row b of minibatch i+1 continues row b of i."""
    offset = int(rng.integers(0, num_steps + 1))  # randint(0, num_steps), inclusive
    n = num_batches(len(corpus), batch_size, num_steps, False)
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    Xs = corpus[offset:offset + num_tokens].reshape(batch_size, -1)
    Ys = corpus[offset + 1:offset + 1 + num_tokens].reshape(batch_size, -1)
    # d2l yields Xs.shape[1] // num_steps windows; that count can vary by one
    # with the offset. We take n (its minimum) so every epoch has one shape.
    X = Xs[:, :n * num_steps].reshape(batch_size, n, num_steps).transpose(1, 0, 2)
    Y = Ys[:, :n * num_steps].reshape(batch_size, n, num_steps).transpose(1, 0, 2)
    return Batches(np.ascontiguousarray(X), np.ascontiguousarray(Y))


def seq_data_iter_random(corpus: np.ndarray, batch_size: int, num_steps: int,
                         rng: np.random.Generator) -> Batches:
    """d2l's random partitioning: shuffled, non-overlapping subsequences."""
    n = num_batches(len(corpus), batch_size, num_steps, True)  # same for every offset
    corpus = corpus[int(rng.integers(0, num_steps)):]  # randint(0, num_steps - 1)
    num_subseqs = (len(corpus) - 1) // num_steps
    starts = np.arange(0, num_subseqs * num_steps, num_steps)
    rng.shuffle(starts)
    starts = starts[:n * batch_size].reshape(n, batch_size)
    window = np.arange(num_steps)
    X = corpus[starts[..., None] + window]
    Y = corpus[starts[..., None] + window + 1]
    return Batches(X.astype(np.int32), Y.astype(np.int32))


def epoch_batches(corpus: np.ndarray, batch_size: int, num_steps: int, random_iter: bool,
                  rng: np.random.Generator) -> Batches:
    make = seq_data_iter_random if random_iter else seq_data_iter_sequential
    return make(corpus, batch_size, num_steps, rng)
