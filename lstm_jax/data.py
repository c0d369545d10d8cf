"""Corpora and the d2l vocabulary: text -> token ids (minibatches: :mod:`lstm_jax.batches`).

With ``normalize="d2l"`` everything follows d2l 0.x token for token, so perplexities are comparable
with the book's; ``normalize="none"`` keeps every character. Text is read in chunks and made into ids
with numpy: a 100 MB file loads in seconds. The built-in corpora are third-party text, downloaded into
:func:`data_dir` and checked, never shipped.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import functools
import json
import re
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from lstm_jax import corpora
from lstm_jax.errors import UserError


UNK, EOS = "<unk>", "<eos>"
_CHUNK_BYTES = 1 << 22  # 4 MB of text at a time: peak memory stays a small multiple of it


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
            cut = ((text.rfind("\n") + 1) or (text.rfind("\r") + 1)) if raw else len(text)  # never inside \r\n
            if cut:
                yield text[:cut]
            if not raw:
                return
            tail = text[cut:]


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def normalize_codepoints(cp: np.ndarray, word_breaks_at_lines: bool = False) -> np.ndarray:
    """d2l's ``re.sub('[^A-Za-z]+', ' ', line).strip().lower()`` on each line, lines joined: letters
    lower-cased, a run of anything else between two letters of one line one space; lines joined with
    no separator (d2l 0.x), or with a space when ``word_breaks_at_lines`` (words never span lines)."""
    upper = (cp >= 65) & (cp <= 90)
    pos = np.flatnonzero(upper | ((cp >= 97) & (cp <= 122)))
    line = np.cumsum((cp == 10) | (cp == 13))[pos]
    same_line = line[1:] == line[:-1]
    space = ((np.diff(pos) > 1) & same_line) | (~same_line if word_breaks_at_lines else False)
    out = np.full(len(pos) + int(space.sum()), 32, np.uint32)
    out[np.arange(len(pos)) + np.concatenate([[0], np.cumsum(space)])] = cp[pos] | 32
    return out


def _token_chunks(path: str, token: str, normalize: str) -> Iterator:
    """Chunks of tokens: code-point arrays (char) or lists of words (word)."""
    for text in _text_chunks(path):
        if normalize == "eos":  # PyTorch's word_language_model, AWD-LSTM: line.split() + ['<eos>']
            lines = text.split("\n")
            yield [w for line in (lines[:-1] if text.endswith("\n") else lines) for w in (*line.split(), EOS)]
        elif normalize == "d2l":
            cp = normalize_codepoints(_codepoints(text), word_breaks_at_lines=token == "word")
            yield cp if token == "char" else cp.tobytes().decode("utf-32-le").split(" ")
        else:
            yield _codepoints(text) if token == "char" else text.split()


@dataclasses.dataclass(frozen=True)
class Vocab:
    """d2l's Vocab: ``<unk>``, reserved tokens, then tokens by descending frequency, ties in first-seen
    order as d2l's, so indices match the book's. ``token`` and ``normalize`` say how text was made into
    tokens, so that a prompt is split the same way."""

    idx_to_token: tuple[str, ...]
    token: str = "char"
    normalize: str = "d2l"

    @classmethod
    def from_counts(cls, counts: dict, token: str = "char", min_freq: int = 0,
                    reserved_tokens: Sequence[str] = (), normalize: str = "d2l") -> "Vocab":
        """``counts`` in first-occurrence order (a Counter, or any ordered mapping)."""
        head = [UNK, *reserved_tokens]
        ranked = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)  # stable: ties stay in order
        return cls((*head, *(t for t, n in ranked if n >= min_freq and t not in head)), token, normalize)

    @functools.cached_property  # it writes the instance __dict__, which a frozen dataclass allows
    def token_to_idx(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.idx_to_token)}

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def ids(self, tokens: Iterable[str]) -> list[int]:
        """Token ids; unknown tokens map to ``<unk>`` (id 0) as in d2l."""
        return [self.token_to_idx.get(t, 0) for t in tokens]

    def unknown(self, tokens: Iterable[str]) -> list[str]:
        """The distinct tokens this vocabulary lacks, in first-seen order."""
        return list(dict.fromkeys(t for t in tokens if t not in self.token_to_idx))

    def to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.idx_to_token[int(i)] for i in ids]

    def split(self, text: str) -> list[str]:
        """Tokens of a prompt, normalized and split the way the training text was (d2l's rule, minus
        the strip: "the " keeps its space)."""
        if self.normalize == "d2l":
            text = re.sub("[^A-Za-z]+", " ", text).lower()
        if self.normalize == "eos":
            return [w for n, line in enumerate(text.split("\n")) for w in ([EOS] if n else []) + line.split()]
        return list(text) if self.token == "char" else text.split()

    def join(self, tokens: Sequence[str]) -> str:
        if self.token == "char":
            return "".join(tokens)
        text = " ".join(tokens)
        return text.replace(f" {EOS} ", "\n").replace(f" {EOS}", "\n").replace(f"{EOS} ", "\n") \
            if self.normalize == "eos" else text

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
    out, filled, index = np.empty(limit, np.int32), 0, vocab.token_to_idx
    table = None
    if vocab.token == "char":
        table = np.zeros(0x110000, np.int32)
        for i, tok in enumerate(vocab.idx_to_token[1:], 1):
            if len(tok) == 1:
                table[ord(tok)] = i
    for chunk in _token_chunks(path, vocab.token, vocab.normalize):
        if filled >= limit:
            break
        part = (table[chunk[:limit - filled]] if table is not None
                else np.fromiter((index.get(w, 0) for w in chunk if w), np.int32)[:limit - filled])
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
        return self.split("train")

    def split(self, name: str) -> np.ndarray:
        return self.ids[slice(*self.splits[name])]


def load_corpus(path: str | dict, token: str = "char", max_tokens: int = 10000, val_fraction: float = 0.0,
                test_fraction: float = 0.0, min_freq: int = 0, normalize: str = "d2l") -> Corpus:
    """d2l's ``load_corpus_time_machine``, then train / val / test as contiguous tails; or a corpus of
    its own split files (``{"train": file, "val": file, "test": file}``: PTB, WikiText-2).

    The vocabulary is built from the whole text (d2l), of a split corpus from its training file
    (Zaremba's, AWD-LSTM's; the other files' unknown tokens become ``<unk>``). Then the id stream,
    of a split corpus each file's, is cut to ``max_tokens`` (``<= 0`` keeps everything). In a one-file
    corpus the last ``test_fraction`` of the stream is the test split, the ``val_fraction`` before it
    the validation split (nanoGPT's shakespeare_char: 0.1 and 0).
    """
    files = path if isinstance(path, dict) else {"train": path}
    counts, total = _count(files["train"], token, normalize)
    if total == 0:
        what = "no letters" if normalize == "d2l" else "no tokens"
        raise UserError(f"corpus file {files['train']} has {what} in it: nothing to train on")
    vocab = Vocab.from_counts(counts, token, min_freq, normalize=normalize)
    cut = lambda n: n if max_tokens <= 0 else min(max_tokens, n)
    if len(files) > 1:
        if val_fraction or test_fraction:
            raise UserError(f"the corpus has its own {' and '.join(s for s in files if s != 'train')} file(s): "
                            "set config.data.val_fraction and config.data.test_fraction to 0")
        parts = {"train": _ids(files["train"], vocab, cut(total))}
        for split in ("val", "test"):
            ids = encode_file(files[split], vocab)[0] if split in files else np.zeros(0, np.int32)
            parts[split] = ids[:cut(len(ids))]
        ends = np.cumsum([len(p) for p in parts.values()]).tolist()
        splits = dict(zip(parts, zip([0] + ends[:-1], ends)))
        return Corpus(np.concatenate(list(parts.values())), splits, vocab, files["train"])
    ids = _ids(files["train"], vocab, cut(total))
    n = len(ids)
    val_end = int(n * (1 - test_fraction))
    train_end = int(n * (1 - test_fraction - val_fraction))
    splits = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, n)}
    for name, fraction in (("val", val_fraction), ("test", test_fraction)):
        start, end = splits[name]
        if fraction > 0 and end <= start:
            raise UserError(f"config.data.{name}_fraction={fraction} of {n} tokens leaves the {name} "
                            f"split empty; raise it or set it to 0")
    return Corpus(ids, splits, vocab, files["train"])


def from_config(d) -> Corpus:
    """``config.data``'s corpus: the one place a run's (and its evaluation's) text is found and read."""
    if not (d.path or d.url) and len(corpora.CORPORA[d.corpus]) > 1 and (d.token, d.normalize) != ("word", "eos"):
        raise UserError(f"corpus {d.corpus} is read as words with <eos> at each line's end: set "
                        "config.data.token='word' and config.data.normalize='eos' (as experiments/ptb_small.py)")
    files = corpora.resolve_corpus(d.corpus, d.path, d.url, d.sha1, d.cache_dir)
    return load_corpus(files, d.token, d.max_tokens, d.val_fraction, d.test_fraction, d.min_freq, d.normalize)
