"""d2l's minibatch schemes, cut into blocks on demand, and held-out streams."""

import numpy as np
import pytest

from lstm_jax import batches
from lstm_jax.errors import UserError


def test_heldout_streams_score_every_token_once():
    ids = np.arange(100, 203, dtype=np.int32)  # token i at position i - 100
    s = batches.heldout_streams(ids, 30, 103, batch_size=4, chunk=5)
    assert s.num_tokens == 73 and s.X.shape == (4, 4, 5)  # 4 streams of 19 (padded to 20) in chunks of 5
    m = s.mask.astype(bool)
    assert m.sum() == 73
    np.testing.assert_array_equal(np.sort(s.Y[m]), ids[30:103])  # every target once
    np.testing.assert_array_equal(s.X[m], s.Y[m] - 1)  # each after the token before it
    # a stream runs on through its chunks: chunk k+1 continues chunk k
    np.testing.assert_array_equal(s.Y[1:, :, 0][m[1:, :, 0]], (s.Y[:-1, :, -1] + 1)[m[1:, :, 0]])


CORPUS = np.arange(1000, dtype=np.int32)  # token i at position i makes offsets visible


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sequential_iterator(seed):
    B, T = 4, 5
    b = batches.EpochBatches(CORPUS, B, T, False, np.random.default_rng(seed))
    n = batches.num_batches(len(CORPUS), B, T, False)
    assert b.X.shape == b.Y.shape == (n, B, T) and len(b) == n
    np.testing.assert_array_equal(b.Y, b.X + 1)  # targets are the inputs shifted by one
    # Row r of minibatch i+1 continues row r of minibatch i: the state can carry over.
    np.testing.assert_array_equal(b.X[1:, :, 0], b.X[:-1, :, -1] + 1)
    assert b.Y.max() < len(CORPUS) and 0 <= b.X[0, 0, 0] <= T  # d2l's offset in [0, num_steps]
    np.testing.assert_array_equal(b.block(3, 2).X, b.X[3:5])  # blocks cut from the same epoch


def test_sequential_offsets_cover_the_range():
    offsets = {int(batches.EpochBatches(CORPUS, 4, 5, False, np.random.default_rng(s)).block(0, 1).X[0, 0, 0])
               for s in range(200)}
    assert offsets == set(range(6))


@pytest.mark.parametrize("seed", [0, 1])
def test_random_iterator(seed):
    B, T = 4, 5
    b = batches.EpochBatches(CORPUS, B, T, True, np.random.default_rng(seed))
    assert b.X.shape == (batches.num_batches(len(CORPUS), B, T, True), B, T)
    np.testing.assert_array_equal(b.Y, b.X + 1)
    np.testing.assert_array_equal(np.diff(b.X, axis=-1), 1)  # each row is a contiguous window
    starts = b.X[..., 0].ravel()
    assert len(set(starts)) == len(starts)  # non-overlapping subsequences
    assert len(set(starts % T)) == 1  # one offset in [0, T-1]
    assert b.Y.max() < len(CORPUS) and not np.all(np.diff(starts) > 0)  # shuffled
    np.testing.assert_array_equal(b.block(2, 3).Y, b.Y[2:5])


def test_iterators_reproducible_from_seed():
    for random_iter in (True, False):
        a, b, c = (batches.EpochBatches(CORPUS, 4, 5, random_iter, np.random.default_rng(seed))
                   for seed in ([7, 3], [7, 3], [7, 4]))
        np.testing.assert_array_equal(a.X, b.X)
        assert not np.array_equal(a.X, c.X)


@pytest.mark.parametrize("random_iter", [False, True])
def test_epoch_shape_fixed_for_every_offset(random_iter):
    # One shape per epoch whatever the random offset, so the step compiles once.
    for length in (997, 1000, 1003):
        shapes = {batches.EpochBatches(CORPUS[:length], 4, 5, random_iter, np.random.default_rng(s)).X.shape
                  for s in range(60)}
        assert shapes == {(batches.num_batches(length, 4, 5, random_iter), 4, 5)}


def test_too_little_text_for_one_minibatch():
    with pytest.raises(UserError, match="the text has 100 tokens, fewer than one minibatch"):
        batches.check_enough(100, 32, 35, False, "the text")


def test_variable_lengths_are_awds_draws_rounded():
    # AWD-LSTM: N(T, 5), N(T / 2, 5) with probability 0.05, at least 5, at most T + 40; here multiples of 5.
    L = batches.variable_lengths(70, 200_000, np.random.default_rng(0))
    assert set(np.unique(L)) <= set(range(5, 111, 5))
    half = L <= 50  # N(35, 5) draws land here, N(70, 5) ones 4 sd away
    assert abs(half.mean() - 0.05) < 0.003
    assert abs(L[~half].mean() - 70) < 0.1 and 4.5 < L[~half].std() < 6.5  # rounding widens the spread a little
    assert abs(L.mean() - 0.95 * 70 - 0.05 * 35) < 0.2
    np.testing.assert_array_equal(L, batches.variable_lengths(70, 200_000, np.random.default_rng(0)))
    assert set(batches.likely_lengths(70)) == set(range(20, 86, 5))
    assert batches.likely_lengths(10) == [5, 10, 15, 20, 25]


def test_variable_minibatches_carry_on_from_each_other():
    corpus = np.arange(20_000, dtype=np.int32)
    B, T = 4, 35
    b = batches.EpochBatches(corpus, B, T, False, np.random.default_rng(3), variable=True)
    fixed = batches.EpochBatches(corpus, B, T, False, np.random.default_rng(3))
    assert len(b) == len(fixed) and len(set(b.lengths)) > 3
    assert b.block(0, 1).X[0, 0, 0] == fixed.block(0, 1).X[0, 0, 0]  # the same offset
    i, minibatches = 0, []
    while i < len(b):
        n = b.same_length(i, 8)
        block = b.block(i, n)
        assert block.X.shape == (n, B, b.length(i)) and set(b.lengths[i:i + n]) == {b.length(i)}
        np.testing.assert_array_equal(block.Y, block.X + 1)
        minibatches += [(x, y) for x, y in zip(block.X, block.Y)]
        i += n
    row_end = np.max([y.max(1) for _, y in minibatches], axis=0)
    moved = 0
    for (_, y), (x, _) in zip(minibatches, minibatches[1:]):
        if (x[:, 0] != y[:, -1]).any():  # where the draws run over the text: moved back to end at its end
            moved += 1
            np.testing.assert_array_equal(x[:, -1] + 1, row_end)
        else:  # row r continues where it stopped: the state carries over
            np.testing.assert_array_equal(x[:, 0], y[:, -1])
    assert moved <= 3
    with pytest.raises(ValueError, match="differ in length"):
        b.block(0, len(b))
    with pytest.raises(ValueError, match="sequential"):
        batches.EpochBatches(corpus, B, T, True, np.random.default_rng(3), variable=True)
