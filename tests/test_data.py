import functools
import hashlib
import http.server
import os
import threading

import numpy as np
import pytest

from lstm_jax import data
from lstm_jax.errors import UserError


def write(tmp_path, text, name="c.txt"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


def test_preprocessing_and_vocab_order(tmp_path):
    # Non-letters collapse to one space, lines are stripped and lower-cased,
    # and lines are joined with no separator (d2l 0.x).
    path = write(tmp_path, "Ab, ba!\n\n  CC-a \n")
    assert data.read_lines(path) == ["ab ba", "", "cc a"]
    corpus = data.load_corpus(path, "char", max_tokens=-1)
    # counts: a=3, b=2, ' '=2, c=2 -> ties keep first-seen order (b before ' ' before c)
    assert corpus.vocab.idx_to_token == ("<unk>", "a", "b", " ", "c")
    assert corpus.vocab.to_tokens(corpus.train) == list("ab bacc a")


def test_vocab_min_freq_reserved_unknown_and_json():
    v = data.Vocab.build(list("aaabbc"), min_freq=2, reserved_tokens=["<pad>"])
    assert v.idx_to_token == ("<unk>", "<pad>", "a", "b")
    assert v.ids(list("abcz")) == [2, 3, 0, 0]
    assert v.unknown(list("abzcz")) == ["z", "c"]
    assert data.Vocab.from_json(v.to_json()) == v


def test_word_tokens(tmp_path):
    path = write(tmp_path, "the cat the dog\nthe end\n")
    corpus = data.load_corpus(path, "word", max_tokens=-1)
    assert corpus.vocab.idx_to_token[:2] == ("<unk>", "the")
    assert corpus.vocab.join(corpus.vocab.to_tokens(corpus.train)) == "the cat the dog the end"


def test_builtin_corpus_is_the_d2l_book():
    path = data.resolve_corpus(None, None, None, "/nonexistent")
    assert data.sha1_of(path) == data.TIME_MACHINE_SHA1
    corpus = data.load_corpus(path)
    assert len(corpus.vocab) == 28
    assert corpus.vocab.idx_to_token[:5] == ("<unk>", " ", "e", "t", "a")  # d2l's printed order
    assert len(corpus.train) == 10000
    assert corpus.vocab.join(corpus.vocab.to_tokens(corpus.train[:24])) == "the time machine by h g "


def test_max_tokens_and_heldout_split(tmp_path):
    path = data.builtin_corpus_path()
    full = data.load_corpus(path, max_tokens=-1)
    c = data.load_corpus(path, max_tokens=1000, num_val=300)
    np.testing.assert_array_equal(c.train, full.train[:1000])
    np.testing.assert_array_equal(c.val, full.train[1000:1300])


CORPUS = np.arange(1000, dtype=np.int32)  # token i at position i makes offsets visible


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sequential_iterator(seed):
    B, T = 4, 5
    b = data.seq_data_iter_sequential(CORPUS, B, T, np.random.default_rng(seed))
    n = data.num_batches(len(CORPUS), B, T, False)
    assert b.X.shape == b.Y.shape == (n, B, T)
    np.testing.assert_array_equal(b.Y, b.X + 1)  # targets are the inputs shifted by one
    # Row r of minibatch i+1 continues row r of minibatch i: the state can carry over.
    np.testing.assert_array_equal(b.X[1:, :, 0], b.X[:-1, :, -1] + 1)
    assert b.Y.max() < len(CORPUS)  # nothing read past the end
    assert 0 <= b.X[0, 0, 0] <= T  # d2l's offset in [0, num_steps]


def test_sequential_offsets_cover_the_range():
    offsets = {int(data.seq_data_iter_sequential(CORPUS, 4, 5, np.random.default_rng(s)).X[0, 0, 0])
               for s in range(200)}
    assert offsets == set(range(6))


@pytest.mark.parametrize("seed", [0, 1])
def test_random_iterator(seed):
    B, T = 4, 5
    b = data.seq_data_iter_random(CORPUS, B, T, np.random.default_rng(seed))
    n = data.num_batches(len(CORPUS), B, T, True)
    assert b.X.shape == (n, B, T)
    np.testing.assert_array_equal(b.Y, b.X + 1)
    np.testing.assert_array_equal(np.diff(b.X, axis=-1), 1)  # each row is a contiguous window
    starts = b.X[..., 0].ravel()
    assert len(set(starts)) == len(starts)  # non-overlapping subsequences
    assert len(set(starts % T)) == 1 and starts.min() % T < T  # one offset in [0, T-1]
    assert b.Y.max() < len(CORPUS)
    assert not np.all(np.diff(starts) > 0)  # shuffled


def test_iterators_reproducible_from_seed():
    for it in (data.seq_data_iter_random, data.seq_data_iter_sequential):
        a = it(CORPUS, 4, 5, np.random.default_rng([7, 3]))
        b = it(CORPUS, 4, 5, np.random.default_rng([7, 3]))
        c = it(CORPUS, 4, 5, np.random.default_rng([7, 4]))
        np.testing.assert_array_equal(a.X, b.X)
        assert not np.array_equal(a.X, c.X)


@pytest.mark.parametrize("random_iter", [False, True])
def test_epoch_shape_fixed_for_every_offset(random_iter):
    # One shape per epoch whatever the random offset, so the step compiles once.
    for length in (997, 1000, 1003):
        shapes = {data.epoch_batches(CORPUS[:length], 4, 5, random_iter, np.random.default_rng(s)).X.shape
                  for s in range(60)}
        assert shapes == {(data.num_batches(length, 4, 5, random_iter), 4, 5)}


def test_bad_corpora(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.resolve_corpus(str(tmp_path / "nope.txt"), None, None, str(tmp_path))
    with pytest.raises(UserError, match="no letters"):
        data.load_corpus(write(tmp_path, "123 !!\n\n", "empty.txt"))
    with pytest.raises(UserError, match="not UTF-8"):
        p = tmp_path / "bin.txt"
        p.write_bytes(b"abc\xff\xfe")
        data.load_corpus(str(p))
    with pytest.raises(UserError, match="fewer than one minibatch"):
        data.check_enough(100, 32, 35, False, "the text")
    with pytest.raises(UserError, match="sha1"):
        data.resolve_corpus(write(tmp_path, "abc"), None, "0" * 40, str(tmp_path))


def test_download_file_url_with_checksum(tmp_path):
    src = write(tmp_path, "hello world\n" * 10, "src.txt")
    sha1 = hashlib.sha1(open(src, "rb").read()).hexdigest()
    cache = tmp_path / "cache"
    got = data.download("file://" + src, sha1, str(cache))
    assert open(got).read() == open(src).read()
    with pytest.raises(UserError, match="expected"):
        data.download("file://" + src, "f" * 40, str(cache / "other"))
    assert not os.listdir(cache / "other")  # a bad download leaves nothing behind


def test_download_over_http(tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    (served / "book.txt").write_text("It was a dark and stormy night\n", encoding="utf-8")
    sha1 = hashlib.sha1((served / "book.txt").read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/book.txt"
        path = data.resolve_corpus(None, url, sha1, str(tmp_path / "cache"))
        assert data.read_lines(path) == ["it was a dark and stormy night"]
        with pytest.raises(UserError, match="cannot download"):
            data.download(url + ".missing", None, str(tmp_path / "cache"))
    finally:
        server.shutdown()
        server.server_close()
