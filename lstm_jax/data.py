"""Corpora and the d2l vocabulary: text -> token ids (minibatches: :mod:`lstm_jax.batches`).

With ``normalize="d2l"`` everything follows d2l 0.x (the edition whose LSTM
chapter we port) token for token, so perplexities are comparable with the
book's; ``normalize="none"`` keeps every character of the file. Text is read
in chunks and turned into ids with numpy, so a 100 MB file loads in seconds
into little more than its id array. Randomness comes from an explicit
``numpy.random.Generator`` that the caller derives from the run's seed and
the epoch, so a run is a function of its config.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import hashlib
import importlib.resources
import json
import os
import re
import tempfile
import urllib.request
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from lstm_jax.errors import UserError

# Built-in corpora, shipped inside the package (runs work offline), by config.data.corpus.
CORPORA = {
    "timemachine": ("timemachine.txt", "090b5e7e70c295757f55df93cb0a180b9691891a"),
    "tinyshakespeare": ("tinyshakespeare.txt", "04486597058d11dcc2c556b1d0433891eb639d2e"),
}
TIME_MACHINE_SHA1 = CORPORA["timemachine"][1]
UNK = "<unk>"
_CHUNK_BYTES = 1 << 22  # 4 MB of text at a time: peak memory stays a small multiple of it


# --------------------------------------------------------------------------
# Getting the text
# --------------------------------------------------------------------------


def sha1_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def builtin_corpus_path(name: str = "timemachine") -> str:
    return str(importlib.resources.files("lstm_jax") / "corpora" / CORPORA[name][0])


def download(url: str, sha1: str | None, cache_dir: str) -> str:
    """Fetch ``url`` into ``cache_dir`` once, verifying its SHA-1.

    The file is written to a temporary name and renamed only after the hash
    matches, so an interrupted or corrupt download never poisons the cache.
    """
    if "://" not in url:
        raise UserError(f"config.data.url={url!r} is not a URL (http://, https:// or file://)")
    name = os.path.basename(url.rstrip("/").split("?")[0]) or "corpus.txt"
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the download cache {cache_dir} ({e.strerror}); "
                        "set config.data.cache_dir") from None
    target = os.path.join(cache_dir, f"{sha1[:12]}-{name}" if sha1 else name)
    if os.path.isfile(target) and (sha1 is None or sha1_of(target) == sha1):
        return target
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".download-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while block := resp.read(1 << 20):
                out.write(block)
        got = sha1_of(tmp)
        if sha1 is not None and got != sha1:
            raise UserError(f"download of {url} has sha1 {got}, expected {sha1}; "
                            "check config.data.url and config.data.sha1")
        os.replace(tmp, target)
    except (OSError, ValueError) as e:  # URLError is an OSError; 'unknown url type' a ValueError
        raise UserError(f"cannot download {url}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def resolve_corpus(corpus: str, path: str | None, url: str | None, sha1: str | None,
                   cache_dir: str) -> str:
    """Which file to read: an explicit path, a download, or a built-in corpus."""
    if url:
        return download(url, sha1, os.path.expanduser(cache_dir))
    if path:
        if os.path.isdir(path):
            raise UserError(f"corpus {path} is a directory, not a text file (config.data.path)")
        if not os.path.isfile(path):
            raise UserError(f"corpus file {path} does not exist (config.data.path)")
        if sha1 is not None and sha1_of(path) != sha1:
            raise UserError(f"corpus file {path} does not match config.data.sha1={sha1}")
        return path
    builtin = builtin_corpus_path(corpus)
    if sha1_of(builtin) != CORPORA[corpus][1]:
        raise UserError(f"the built-in corpus {builtin} is corrupt (sha1 mismatch); reinstall lstm_jax")
    return builtin


# --------------------------------------------------------------------------
# Text -> tokens, vectorized over code points
# --------------------------------------------------------------------------


def _text_chunks(path: str) -> Iterator[str]:
    """The file as strings of whole lines (so normalization needs no state across chunks)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    tail, offset = "", 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(_CHUNK_BYTES)
            try:
                text = tail + decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise UserError(f"corpus file {path} is not UTF-8 text ({e.reason} near byte "
                                f"{offset + e.start})") from None
            if "\x00" in text:
                raise UserError(f"corpus file {path} looks binary (it holds NUL bytes), not like text")
            offset += len(raw)
            if not raw:
                if text:
                    yield text
                return
            cut = max(text.rfind("\n"), text.rfind("\r")) + 1
            if cut:
                yield text[:cut]
            tail = text[cut:]


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def normalize_codepoints(cp: np.ndarray, word_breaks_at_lines: bool = False) -> np.ndarray:
    """d2l's ``re.sub('[^A-Za-z]+', ' ', line).strip().lower()`` on each line, lines joined.

    Letters are kept lower-cased; a run of anything else between two letters of
    one line becomes one space; lines are joined with no separator (d2l 0.x), or
    with a space when ``word_breaks_at_lines`` (word tokens never span lines).
    """
    upper = (cp >= 65) & (cp <= 90)
    pos = np.flatnonzero(upper | ((cp >= 97) & (cp <= 122)))
    line = np.cumsum((cp == 10) | (cp == 13))[pos]
    same_line = line[1:] == line[:-1]
    space = ((np.diff(pos) > 1) & same_line) | (~same_line if word_breaks_at_lines else False)
    out = np.full(len(pos) + int(space.sum()), 32, np.uint32)
    out[np.arange(len(pos)) + np.concatenate([[0], np.cumsum(space)])] = cp[pos] | 32
    return out


def normalize_text(text: str, normalize: str) -> str:
    """A prompt made like the training text: d2l's rule, minus the strip (so "the " keeps its space)."""
    return re.sub("[^A-Za-z]+", " ", text).lower() if normalize == "d2l" else text


def _token_chunks(path: str, token: str, normalize: str) -> Iterator:
    """Chunks of tokens: code-point arrays (char) or lists of words (word)."""
    for text in _text_chunks(path):
        if normalize == "d2l":
            cp = normalize_codepoints(_codepoints(text), word_breaks_at_lines=token == "word")
            if token == "char":
                yield cp
            else:
                yield cp.tobytes().decode("utf-32-le").split(" ")
        elif token == "char":
            yield _codepoints(text)
        else:
            yield text.split()


@dataclasses.dataclass(frozen=True)
class Vocab:
    """d2l's Vocab: ``<unk>``, reserved tokens, then tokens by descending frequency.

    Ties keep first-occurrence order, exactly as d2l, so indices match the
    book's. ``token`` and ``normalize`` say how text was made into tokens, so
    that a prompt is split the same way.
    """

    idx_to_token: tuple[str, ...]
    token: str = "char"
    normalize: str = "d2l"

    @classmethod
    def build(cls, tokens: Iterable[str], token: str = "char", min_freq: int = 0,
              reserved_tokens: Sequence[str] = (), normalize: str = "d2l") -> "Vocab":
        return cls.from_counts(collections.Counter(tokens), token, min_freq, reserved_tokens, normalize)

    @classmethod
    def from_counts(cls, counts: dict, token: str = "char", min_freq: int = 0,
                    reserved_tokens: Sequence[str] = (), normalize: str = "d2l") -> "Vocab":
        """``counts`` in first-occurrence order (a Counter, or any ordered mapping)."""
        idx_to_token = [UNK, *reserved_tokens]
        seen = set(idx_to_token)
        for tok, freq in sorted(counts.items(), key=lambda kv: kv[1], reverse=True):  # stable
            if freq < min_freq:
                break
            if tok not in seen:
                idx_to_token.append(tok)
                seen.add(tok)
        return cls(tuple(idx_to_token), token, normalize)

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
        """Tokens of a prompt, normalized and split the way the training text was."""
        text = normalize_text(text, self.normalize)
        return list(text) if self.token == "char" else text.split()

    def join(self, tokens: Sequence[str]) -> str:
        return "".join(tokens) if self.token == "char" else " ".join(tokens)

    # JSON, never pickle: a vocabulary must load without executing code.
    def to_json(self) -> str:
        return json.dumps({"idx_to_token": list(self.idx_to_token), "token": self.token,
                           "normalize": self.normalize})

    @classmethod
    def from_json(cls, text: str) -> "Vocab":
        obj = json.loads(text)
        return cls(tuple(obj["idx_to_token"]), obj["token"], obj.get("normalize", "d2l"))


def _count(path: str, token: str, normalize: str) -> tuple[dict, int]:
    """Token counts in first-occurrence order, and the number of tokens."""
    if token == "word":
        counts = collections.Counter()
        for words in _token_chunks(path, token, normalize):
            counts.update(w for w in words if w)
        return counts, sum(counts.values())
    counts = np.zeros(0x110000, np.int64)
    first = np.full(0x110000, np.iinfo(np.int64).max)
    total = 0
    for cp in _token_chunks(path, token, normalize):
        chunk = np.bincount(cp, minlength=len(counts))
        new = np.flatnonzero((chunk > 0) & (counts == 0))
        if len(new):  # their first positions: np.unique reports first occurrences
            at = np.flatnonzero(np.isin(cp, new))
            values, index = np.unique(cp[at], return_index=True)
            first[values] = total + at[index]
        counts += chunk
        total += len(cp)
    seen = np.flatnonzero(counts)
    seen = seen[np.argsort(first[seen], kind="stable")]
    return {chr(c): int(counts[c]) for c in seen}, total


def _ids(path: str, vocab: Vocab, limit: int) -> np.ndarray:
    """The first ``limit`` token ids of the file."""
    out = np.empty(limit, np.int32)
    table = None
    if vocab.token == "char":
        table = np.zeros(0x110000, np.int32)
        for i, tok in enumerate(vocab.idx_to_token[1:], 1):
            if len(tok) == 1:
                table[ord(tok)] = i
    filled = 0
    for chunk in _token_chunks(path, vocab.token, vocab.normalize):
        if filled >= limit:
            break
        if table is not None:
            part = table[chunk[:limit - filled]]
        else:
            index = vocab.token_to_idx
            part = np.fromiter((index.get(w, 0) for w in chunk if w), np.int32)[:limit - filled]
        out[filled:filled + len(part)] = part
        filled += len(part)
    return out[:filled]


def encode_file(path: str, vocab: Vocab) -> tuple[np.ndarray, collections.Counter]:
    """A new file's token ids under ``vocab`` (tokens made as the vocabulary's were), and the
    tokens it lacks with their counts (they become ``<unk>``)."""
    counts, total = _count(path, vocab.token, vocab.normalize)
    missing = collections.Counter({t: n for t, n in counts.items() if t not in vocab.token_to_idx})
    return _ids(path, vocab, total), missing


class Corpus(NamedTuple):
    ids: np.ndarray  # int32 token ids of the whole (cut) stream: train, then val, then test
    splits: dict  # name -> (start, end) into ids
    vocab: Vocab
    source: str

    @property
    def train(self) -> np.ndarray:
        start, end = self.splits["train"]
        return self.ids[start:end]

    def split(self, name: str) -> np.ndarray:
        start, end = self.splits[name]
        return self.ids[start:end]


def load_corpus(path: str, token: str = "char", max_tokens: int = 10000, val_fraction: float = 0.0,
                test_fraction: float = 0.0, min_freq: int = 0, normalize: str = "d2l") -> Corpus:
    """d2l's ``load_corpus_time_machine``, then train / val / test as contiguous tails.

    As in d2l the vocabulary is built from the whole text, and the id stream is
    then cut to ``max_tokens`` (``<= 0`` keeps everything). The last
    ``test_fraction`` of the stream is the test split, the ``val_fraction``
    before it the validation split (nanoGPT's shakespeare_char: 0.1 and 0).
    """
    counts, total = _count(path, token, normalize)
    if total == 0:
        what = "no letters" if normalize == "d2l" else "no tokens"
        raise UserError(f"corpus file {path} has {what} in it: nothing to train on")
    vocab = Vocab.from_counts(counts, token, min_freq, normalize=normalize)
    ids = _ids(path, vocab, total if max_tokens <= 0 else min(max_tokens, total))
    n = len(ids)
    val_end = int(n * (1 - test_fraction))
    train_end = int(n * (1 - test_fraction - val_fraction))
    splits = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, n)}
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        start, end = splits[name]
        if fraction > 0 and end <= start:
            raise UserError(f"config.data.{name}_fraction={fraction} of {n} tokens leaves the {name} "
                            f"split empty; raise it or set it to 0")
    return Corpus(ids, splits, vocab, path)
