import collections
import functools
import hashlib
import http.server
import os
import re
import threading

import numpy as np
import pytest

from lstm_jax import corpora, data
from lstm_jax.errors import UserError


UNREACHABLE = "http://127.0.0.1:9/x"  # the discard port: nothing listens, the connection is refused


def write(tmp_path, text, name="c.txt"):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return str(p)


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if not self.path.endswith(".cut"):
            return super().do_GET()
        self.send_response(200)  # an interrupted download: the connection closes early
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"the first bytes")
        self.close_connection = True


@pytest.fixture
def www(tmp_path):
    """A local HTTP server for the files in tmp_path/www: that folder and its URL."""
    served = tmp_path / "www"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def fake_corpus(monkeypatch, url, sha1):
    """A built-in corpus "fake": one file, sub/fake.txt in the data directory."""
    monkeypatch.setitem(corpora.CORPORA, "fake", {"train": corpora.CorpusFile("sub/fake.txt", sha1, url)})


def d2l_tokens(path, token):
    """d2l 0.x's read_time_machine + tokenize, line by line, as the book writes them."""
    with open(path, encoding="utf-8") as f:
        lines = [re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in f.readlines()]
    return [t for line in lines for t in (list(line) if token == "char" else line.split())]


@pytest.mark.parametrize("token", ["char", "word"])
def test_vectorized_loading_is_d2l_token_for_token(token):
    # The book's own preprocessing, on the whole book: same vocabulary order, same ids.
    path = corpora.corpus_path("timemachine")
    tokens = d2l_tokens(path, token)
    vocab = data.Vocab.from_counts(collections.Counter(tokens), token=token)
    corpus = data.load_corpus(path, token, max_tokens=-1)
    assert corpus.vocab == vocab
    np.testing.assert_array_equal(corpus.ids, vocab.ids(tokens))
    assert len(vocab) == {"char": 28, "word": 4580}[token]


def test_preprocessing_and_vocab_order(tmp_path):
    # Non-letters collapse to one space, lines are stripped and lower-cased, and lines
    # are joined with no separator (d2l 0.x); \r\n and \r end lines too.
    path = write(tmp_path, "Ab, ba!\r\n\n  CC-a \rxY")
    corpus = data.load_corpus(path, "char", max_tokens=-1)
    # counts: a=3, b=2, ' '=2, c=2 ... -> ties keep first-seen order (b before ' ' before c)
    assert corpus.vocab.idx_to_token[:5] == ("<unk>", "a", "b", " ", "c")
    assert "".join(corpus.vocab.to_tokens(corpus.train)) == "ab bacc axy"
    words = data.load_corpus(path, "word", max_tokens=-1)
    assert words.vocab.to_tokens(words.train) == ["ab", "ba", "cc", "a", "xy"]  # words never span lines


def test_raw_text_keeps_every_character(tmp_path):
    text = "First Citizen:\nBefore we proceed, hear me.\r\n\tÉté — ok!\n"
    path = write(tmp_path, text)
    corpus = data.load_corpus(path, "char", max_tokens=-1, normalize="none")
    assert "".join(corpus.vocab.to_tokens(corpus.ids)) == text
    assert set(corpus.vocab.idx_to_token) == {"<unk>", *text}
    counts = collections.Counter(text)
    assert [counts[t] for t in corpus.vocab.idx_to_token[1:]] == sorted(counts.values(), reverse=True)
    words = data.load_corpus(path, "word", max_tokens=-1, normalize="none")
    assert words.vocab.to_tokens(words.ids) == text.split()


def test_tiny_shakespeare_is_nanogpts_split():
    path = corpora.resolve_corpus("tinyshakespeare", None, None, None, None)["train"]
    assert path == os.path.join(corpora.data_dir(), "tinyshakespeare.txt")
    assert corpora.sha1_of(path) == "04486597058d11dcc2c556b1d0433891eb639d2e"
    c = data.load_corpus(path, "char", max_tokens=0, val_fraction=0.1, normalize="none")
    assert len(c.vocab) == 66  # 65 characters and <unk>
    assert c.splits == {"train": (0, 1003854), "val": (1003854, 1115394), "test": (1115394, 1115394)}
    assert "".join(c.vocab.to_tokens(c.split("val")[:12])) == "?\n\nGREMIO:\nG"


def test_vocab_min_freq_reserved_unknown_and_json():
    v = data.Vocab.from_counts(collections.Counter("aaabbc"), min_freq=2, reserved_tokens=["<pad>"])
    assert v.idx_to_token == ("<unk>", "<pad>", "a", "b")
    assert v.ids(list("abcz")) == [2, 3, 0, 0]
    assert v.unknown(list("abzcz")) == ["z", "c"]
    assert data.Vocab.from_json(v.to_json()) == v
    old = '{"idx_to_token": ["<unk>", "a"], "token": "char"}'  # written before 'normalize' existed
    assert data.Vocab.from_json(old).normalize == "d2l"


def test_prompts_are_normalized_like_the_text():
    d2l = data.Vocab(("<unk>", " ", "t", "i", "m", "e"), "char", "d2l")
    assert d2l.split("Time, Time!") == list("time time ")
    raw = data.Vocab(("<unk>", "T", "i"), "char", "none")
    assert raw.split("Ti!") == ["T", "i", "!"]


def test_builtin_corpus_is_the_d2l_book():
    path = corpora.resolve_corpus("timemachine", None, None, None, None)["train"]
    assert path == corpora.corpus_path("timemachine") == os.path.join(corpora.data_dir(), "timemachine.txt")
    assert corpora.sha1_of(path) == "090b5e7e70c295757f55df93cb0a180b9691891a"
    corpus = data.load_corpus(path)
    assert corpus.vocab.idx_to_token[:5] == ("<unk>", " ", "e", "t", "a")  # d2l's printed order
    assert len(corpus.train) == 10000
    assert "".join(corpus.vocab.to_tokens(corpus.train[:24])) == "the time machine by h g "


def test_splits_are_contiguous_tails():
    path = corpora.corpus_path("timemachine")
    full = data.load_corpus(path, max_tokens=-1)
    c = data.load_corpus(path, max_tokens=11000, val_fraction=0.1, test_fraction=0.05)
    assert c.splits == {"train": (0, 9350), "val": (9350, 10450), "test": (10450, 11000)}
    np.testing.assert_array_equal(c.ids, full.ids[:11000])  # the vocabulary is the whole text's
    assert c.vocab == full.vocab
    with pytest.raises(UserError, match=r"config.data.test_fraction=1e-20 of 11000 tokens leaves the test split"):
        data.load_corpus(path, max_tokens=11000, test_fraction=1e-20)


def test_bad_corpora(tmp_path):
    resolve = lambda path: corpora.resolve_corpus("timemachine", path, None, None, str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        resolve(str(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match="has no train.txt"):
        resolve(str(tmp_path))
    with pytest.raises(UserError, match="no letters"):
        data.load_corpus(write(tmp_path, "123 !!\n\n", "digits.txt"))
    with pytest.raises(UserError, match="no tokens"):
        data.load_corpus(write(tmp_path, "", "empty.txt"), normalize="none")
    p = tmp_path / "bin.txt"
    p.write_bytes(b"abc\xff\xfe")
    with pytest.raises(UserError, match="not UTF-8 text"):
        data.load_corpus(str(p))
    p.write_bytes(b"abc\x00\x01def")
    with pytest.raises(UserError, match="looks binary"):
        data.load_corpus(str(p))
    with pytest.raises(UserError, match="sha1"):
        corpora.resolve_corpus("timemachine", write(tmp_path, "abc"), None, "0" * 40, str(tmp_path))
    with pytest.raises(UserError, match="not-a-url.* is not a URL"):
        corpora.resolve_corpus("timemachine", None, "not-a-url", None, str(tmp_path))
    with pytest.raises(UserError, match="cannot download"):
        corpora.resolve_corpus("timemachine", None, "gopher://x/y", None, str(tmp_path))


def test_encode_file_counts_what_the_vocabulary_lacks(tmp_path):
    vocab = data.Vocab(("<unk>", "a", "b"), "char", "none")
    ids, missing = data.encode_file(write(tmp_path, "abcab!c"), vocab)
    np.testing.assert_array_equal(ids, [1, 2, 0, 1, 2, 0, 0])
    assert missing == {"c": 2, "!": 1}


def test_download_file_url_with_checksum(tmp_path):
    src = write(tmp_path, "hello world\n" * 10, "src.txt")
    sha1 = hashlib.sha1(open(src, "rb").read()).hexdigest()
    cache = tmp_path / "cache"
    got = corpora.download("file://" + src, sha1, str(cache))
    assert open(got).read() == open(src).read()
    with pytest.raises(UserError, match="expected"):
        corpora.download("file://" + src, "f" * 40, str(cache / "other"))
    assert not os.listdir(cache / "other")  # a bad download leaves nothing behind


def test_download_over_http(tmp_path, www):
    served, base = www
    (served / "book.txt").write_text("It was a dark and stormy night\n", encoding="utf-8")
    (served / "book.txt.cut").write_text("never served whole", encoding="utf-8")
    sha1 = hashlib.sha1((served / "book.txt").read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    path = corpora.resolve_corpus("timemachine", None, base + "book.txt", sha1, str(cache))["train"]
    assert path == str(cache / f"{sha1[:12]}-book.txt")
    corpus = data.load_corpus(path, max_tokens=-1)
    assert corpus.vocab.join(corpus.vocab.to_tokens(corpus.ids)) == "it was a dark and stormy night"
    with pytest.raises(UserError, match="cannot download"):
        corpora.download(base + "book.txt.missing", None, str(cache))
    with pytest.raises(UserError, match=r"cannot download .*book.txt.cut: IncompleteRead"):
        corpora.download(base + "book.txt.cut", None, str(cache))  # no sha1: only the length says it is cut
    assert os.listdir(cache) == [os.path.basename(path)]


def test_url_downloads_go_to_the_data_dir(tmp_path, monkeypatch):
    src = write(tmp_path, "hello\n", "src.txt")
    monkeypatch.setenv("LSTM_JAX_DATA", str(tmp_path / "data"))
    assert corpora.resolve_corpus("timemachine", None, "file://" + src, None, None)["train"] == str(tmp_path / "data" / "src.txt")
    monkeypatch.delenv("LSTM_JAX_DATA")
    assert corpora.data_dir() == os.path.expanduser("~/.cache/lstm_jax")


def test_present_corpus_file_is_used_without_network(tmp_path, monkeypatch):
    # The real corpus, from LSTM_JAX_DATA (in CI a read-only directory nothing may be written to).
    f = corpora.CORPORA["timemachine"]["train"]
    monkeypatch.setitem(corpora.CORPORA["timemachine"], "train", f._replace(url=UNREACHABLE))
    before = sorted(os.listdir(corpora.data_dir()))
    assert corpora.corpus_path("timemachine") == os.path.join(corpora.data_dir(), "timemachine.txt")
    assert sorted(os.listdir(corpora.data_dir())) == before
    # A fresh data directory holding one file, and a given cache_dir that wins over it.
    path = write(tmp_path, "some text\n", "data/sub/fake.txt")
    fake_corpus(monkeypatch, UNREACHABLE, corpora.sha1_of(path))
    monkeypatch.setenv("LSTM_JAX_DATA", str(tmp_path / "data"))
    assert corpora.resolve_corpus("fake", None, None, None, None)["train"] == path
    assert os.listdir(tmp_path / "data" / "sub") == ["fake.txt"]
    other = write(tmp_path, "some text\n", "cache/sub/fake.txt")
    assert corpora.resolve_corpus("fake", None, None, None, str(tmp_path / "cache"))["train"] == other


def test_missing_corpus_file_is_downloaded_once(tmp_path, monkeypatch, www):
    served, base = www
    (served / "book.txt").write_text("It was a dark and stormy night\n", encoding="utf-8")
    fake_corpus(monkeypatch, base + "book.txt", corpora.sha1_of(served / "book.txt"))
    monkeypatch.setenv("LSTM_JAX_DATA", str(tmp_path / "data"))  # does not exist yet
    path = corpora.corpus_path("fake")
    assert path == str(tmp_path / "data" / "sub" / "fake.txt")
    assert open(path).read() == "It was a dark and stormy night\n"
    assert os.listdir(tmp_path / "data" / "sub") == ["fake.txt"]  # no temporary file left
    (served / "book.txt").unlink()
    assert corpora.corpus_path("fake") == path  # from now on no network is needed


@pytest.mark.parametrize("name,sha1,why", [
    ("book.txt", "0" * 40, "has sha1 [0-9a-f]{40}, expected 0{40}"),  # a wrong download
    ("missing.txt", None, "HTTP Error 404"),
    ("book.txt.cut", None, "IncompleteRead"),  # interrupted
    (None, None, "Connection refused"),  # no network
])
def test_failed_download_leaves_nothing_and_says_where_to_put_the_file(tmp_path, monkeypatch, www, name, sha1, why):
    served, base = www
    (served / "book.txt").write_text("It was a dark and stormy night\n", encoding="utf-8")
    (served / "book.txt.cut").write_text("It was a dark and stormy night\n", encoding="utf-8")
    url, sha1 = (base + name if name else UNREACHABLE), sha1 or corpora.sha1_of(served / "book.txt")
    fake_corpus(monkeypatch, url, sha1)
    monkeypatch.setenv("LSTM_JAX_DATA", str(tmp_path / "data"))
    with pytest.raises(UserError) as e:
        corpora.resolve_corpus("fake", None, None, None, None)
    target = tmp_path / "data" / "sub" / "fake.txt"
    message = str(e.value)
    assert "\n" not in message and re.search(why, message), message
    assert f"put {url} (sha1 {sha1}) at {target}, or set LSTM_JAX_DATA to a directory holding sub/fake.txt" \
        in message
    assert os.listdir(target.parent) == []


def test_present_corpus_file_with_a_wrong_hash_is_an_error(tmp_path, monkeypatch):
    path = write(tmp_path, "not the right text\n", "data/sub/fake.txt")
    fake_corpus(monkeypatch, UNREACHABLE, "1" * 40)
    with pytest.raises(UserError) as e:
        corpora.corpus_path("fake", directory=str(tmp_path / "data"))
    assert str(e.value) == (f"{path} has sha1 {corpora.sha1_of(path)}, not that of the fake corpus; put {UNREACHABLE} "
                            f"(sha1 {'1' * 40}) at {path}, or set LSTM_JAX_DATA to a directory holding sub/fake.txt "
                            "and unset config.data.cache_dir")
    assert open(path).read() == "not the right text\n"  # left for the user to replace


@pytest.mark.parametrize("token,normalize", [("char", "d2l"), ("char", "none"), ("word", "d2l"), ("word", "none"),
                                            ("word", "eos")])
def test_chunk_boundaries_change_nothing(token, normalize, monkeypatch):
    # The file is read a few MB at a time; in 4 KB pieces (lines and words cut across
    # many boundaries) the ids and the vocabulary's order must be the same.
    path = corpora.corpus_path("timemachine")
    whole = data.load_corpus(path, token, 0, normalize=normalize)
    monkeypatch.setattr(data, "_CHUNK_BYTES", 4096)
    pieces = data.load_corpus(path, token, 0, normalize=normalize)
    assert pieces.vocab.idx_to_token == whole.vocab.idx_to_token
    np.testing.assert_array_equal(pieces.ids, whole.ids)
    assert len(whole.ids) > 30000


@pytest.mark.parametrize("corpus,vocab,counts,first", [
    ("ptb", 10_000, (929_589, 73_760, 82_430), "aer banknote berlitz"),
    pytest.param("wikitext2", 33_278, (2_088_628, 217_646, 245_569), "<eos> = Valkyria", marks=pytest.mark.slow),
])
def test_word_corpora_are_their_own_three_files(corpus, vocab, counts, first):
    """Word tokens split on whitespace, one <eos> per line (blank lines too), the training file's
    vocabulary: the counts PyTorch's word_language_model and AWD-LSTM report."""
    d = dict(corpus=corpus, path=None, url=None, sha1=None, cache_dir=None, token="word", normalize="eos",
             max_tokens=0, val_fraction=0.0, test_fraction=0.0, min_freq=0)
    c = data.from_config(type("Data", (), d))
    assert len(c.vocab) == vocab and c.vocab.idx_to_token[0] == "<unk>" and "<eos>" in c.vocab.token_to_idx
    assert tuple(len(c.split(s)) for s in ("train", "val", "test")) == counts
    assert " ".join(c.vocab.to_tokens(c.train[:3])) == first
    assert c.vocab.to_tokens(c.split("val")[-1:]) == ["<eos>"]
    with pytest.raises(UserError, match="corpus ptb is read as words with <eos> at each line's end"):
        data.from_config(type("Data", (), {**d, "corpus": "ptb", "token": "char", "normalize": "d2l"}))


def test_a_directory_is_a_corpus_of_its_own_splits(tmp_path):
    write(tmp_path, "the cat sat\n\nthe dog\n", "corpus/train.txt")
    (tmp_path / "corpus" / "valid.txt").write_bytes(b"the bird sat\r\nthe cat")  # CRLF, no final newline
    files = corpora.resolve_corpus("timemachine", str(tmp_path / "corpus"), None, None, None)
    assert set(files) == {"train", "val"}
    c = data.load_corpus(files, "word", 0, normalize="eos")
    words = lambda s: c.vocab.to_tokens(c.split(s))
    assert words("train") == ["the", "cat", "sat", "<eos>", "<eos>", "the", "dog", "<eos>"]
    assert words("val") == ["the", "<unk>", "sat", "<eos>", "the", "cat", "<eos>"]  # bird: not in train
    assert c.splits["test"] == (15, 15) and c.source == files["train"]
    short = data.load_corpus(files, "word", 2, normalize="eos")  # max_tokens cuts each file
    assert short.splits == {"train": (0, 2), "val": (2, 4), "test": (4, 4)}
    with pytest.raises(UserError, match="has its own val file"):
        data.load_corpus(files, "word", 0, val_fraction=0.1, normalize="eos")
    with pytest.raises(UserError, match="sha1 checks one file"):
        corpora.resolve_corpus("timemachine", str(tmp_path / "corpus"), None, "0" * 40, None)
    assert c.vocab.split("the cat\nsat") == ["the", "cat", "<eos>", "sat"]
    assert c.vocab.join(["the", "cat", "<eos>", "sat", "<eos>"]) == "the cat\nsat\n"
