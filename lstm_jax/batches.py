"""Minibatches: d2l's two partitioning schemes, cut into blocks on demand, and held-out streams.

As d2l 0.x: sequential partitioning (row b of minibatch i+1 continues row b of minibatch i, so the
state can carry over) and random partitioning (shuffled non-overlapping windows). Randomness comes
from a ``numpy.random.Generator`` that the caller derives from the run's seed and the epoch.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lstm_jax.errors import UserError


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
            f"(about {batch_size * num_steps + num_steps + 1}); use a longer text or smaller sizes")


# AWD-LSTM's variable sequence length (Merity et al. 2018): N(T, 5) steps, N(T/2, 5) with probability
# 0.05, at least 5 and at most T + 40; rounded here to a multiple of 5 so that a run compiles a few programs.
BPTT_HALF_P, BPTT_SD, BPTT_MIN, BPTT_MAX_DELTA, BPTT_ROUND = 0.05, 5.0, 5, 40, 5


def variable_lengths(num_steps: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` minibatch lengths drawn as AWD-LSTM draws them, rounded to a multiple of 5 (int64)."""
    base = np.where(rng.random(n) < BPTT_HALF_P, num_steps / 2, num_steps)
    drawn = np.round(rng.normal(base, BPTT_SD) / BPTT_ROUND) * BPTT_ROUND
    return np.clip(drawn, BPTT_MIN, num_steps + BPTT_MAX_DELTA).astype(np.int64)


def likely_lengths(num_steps: int) -> list[int]:
    """The lengths :func:`variable_lengths` draws within 3 standard deviations: the ones worth
    compiling before training (a rarer one compiles when it comes)."""
    spread = 3 * BPTT_SD
    return [L for L in range(BPTT_MIN, num_steps + BPTT_MAX_DELTA + 1, BPTT_ROUND)
            if any(abs(L - base) <= spread for base in (num_steps, num_steps / 2))]


class EpochBatches:
    """One epoch's minibatches, cut on demand: ``block(i, n)`` is minibatches i..i+n-1. Nothing of
    the epoch is copied up front, so a long corpus costs no more memory than its id array.

    ``variable`` (sequential partitioning only): each minibatch's length is drawn as AWD-LSTM draws
    it (:func:`variable_lengths`, ``lengths``), each continuing where the one before ended; as many
    minibatches as with ``num_steps`` (their mean length is 0.975 of it), the last ones moved back
    to end inside the text where a draw runs over. ``block`` takes minibatches of one length.
    """

    def __init__(self, corpus: np.ndarray, batch_size: int, num_steps: int, random_iter: bool,
                 rng: np.random.Generator, variable: bool = False):
        B, T = batch_size, num_steps
        self.shape = (B, T)
        self._n = num_batches(len(corpus), B, T, random_iter)
        self._corpus = corpus
        self.lengths = None
        if variable and random_iter:
            raise ValueError("variable lengths need sequential partitioning")
        if random_iter:  # d2l's seq_data_iter_random: shuffled, non-overlapping windows
            start = int(rng.integers(0, T))  # randint(0, num_steps - 1)
            starts = start + np.arange(0, ((len(corpus) - start - 1) // T) * T, T)
            rng.shuffle(starts)
            self._starts = starts[:self._n * B].reshape(self._n, B)
        else:  # d2l's seq_data_iter_sequential: row b of minibatch i+1 continues row b of i
            offset = int(rng.integers(0, T + 1))  # randint(0, num_steps), inclusive
            num_tokens = ((len(corpus) - offset - 1) // B) * B
            self._rows = corpus[offset:offset + num_tokens + 1]
            self._width = num_tokens // B
            self._starts = None
            if variable:  # drawn after the offset: the offset is the fixed length's
                self.lengths = variable_lengths(T, self._n, rng)
                starts = np.concatenate([[0], np.cumsum(self.lengths[:-1])])
                self._step_starts = np.minimum(starts, self._width - self.lengths)

    def __len__(self) -> int:
        return self._n

    def length(self, i: int) -> int:
        """Minibatch i's number of time steps."""
        return self.shape[1] if self.lengths is None else int(self.lengths[i])

    def same_length(self, i: int, n: int) -> int:
        """How many of minibatches i..i+n-1, from i on, have minibatch i's length."""
        n = min(n, self._n - i)
        if self.lengths is None:
            return n
        run = self.lengths[i:i + n] == self.lengths[i]
        return n if run.all() else int(np.argmin(run))

    def block(self, i: int, n: int) -> Batches:
        B, T = self.shape
        if self.lengths is not None:
            L = self.length(i)
            if self.same_length(i, n) != n:
                raise ValueError(f"minibatches {i}..{i + n - 1} differ in length: take same_length(i, n) of them")
            s = (np.arange(B)[:, None, None] * self._width + self._step_starts[i:i + n, None] + np.arange(L))
            s = s.transpose(1, 0, 2)
            return Batches(self._rows[s].astype(np.int32), self._rows[s + 1].astype(np.int32))
        window = np.arange(T)
        if self._starts is not None:
            s = self._starts[i:i + n, :, None] + window
            return Batches(self._corpus[s].astype(np.int32), self._corpus[s + 1].astype(np.int32))
        # d2l yields (row width) // num_steps windows; that count can vary by one
        # with the offset. We take the minimum, so every epoch has one shape.
        s = (np.arange(B)[:, None] * self._width + i * T + np.arange(n * T)).reshape(B, n, T)
        s = s.transpose(1, 0, 2)
        return Batches(self._rows[s].astype(np.int32), self._rows[s + 1].astype(np.int32))

    @property
    def X(self) -> np.ndarray:
        return self.block(0, len(self)).X

    @property
    def Y(self) -> np.ndarray:
        return self.block(0, len(self)).Y


class Streams(NamedTuple):
    """A held-out split as B parallel streams, cut into chunks of C steps: ``X``, ``Y`` (N, B, C) int32
    and ``mask`` (N, B, C). Each stream is scored from a zero state carried through its chunks; padding has mask 0."""

    X: np.ndarray
    Y: np.ndarray
    mask: np.ndarray
    num_tokens: int


def heldout_streams(ids: np.ndarray, start: int, end: int, batch_size: int, chunk: int) -> Streams:
    """Every token of ``ids[start:end]`` as a target, each after the token before it."""
    n = end - start
    if start < 1 or n < 1:
        raise ValueError("a held-out split needs at least one token and one before it")
    B = batch_size
    width = -(-n // B)
    padded = -(-width // chunk) * chunk
    X, Y, mask = (np.zeros((B, padded), np.int32) for _ in range(3))
    flat = lambda a: np.pad(a, (0, B * width - n)).reshape(B, width)
    X[:, :width], Y[:, :width] = flat(ids[start - 1:end - 1]), flat(ids[start:end])
    mask[:, :width] = flat(np.ones(n, np.int32))
    cut = lambda a: a.reshape(B, -1, chunk).transpose(1, 0, 2).copy()
    return Streams(cut(X), cut(Y), cut(mask).astype(np.float32), n)
