"""Time and peak memory of ``data.load_corpus`` on a large text file, each case in a fresh process.

  python scripts/bench_loading.py              # tiny Shakespeare repeated to 100 MB
  python scripts/bench_loading.py --mb 20

Prints, per tokenization and normalization, with ``max_tokens`` 10,000 (the
default: the vocabulary still comes from the whole text) and 0 (every token):
seconds, the process's peak resident memory above what Python and numpy take
alone, and the id array's size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = """
import json, resource, sys, time
import numpy as np
from lstm_jax import data
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
c = data.load_corpus(sys.argv[1], sys.argv[2], int(sys.argv[3]), normalize=sys.argv[4])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_mb": (peak - base) / 1024, "ids_mb": c.ids.nbytes / 2**20,
                  "tokens": int(len(c.ids)), "vocab": len(c.vocab)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the test file")
    args = parser.parse_args()
    from lstm_jax import corpora

    with open(corpora.corpus_path("tinyshakespeare"), "rb") as f:
        text = f.read()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.txt")
        with open(path, "wb") as f:
            for _ in range(-(-args.mb * 2**20 // len(text))):
                f.write(text)
        print(f"{os.path.getsize(path) / 2**20:.0f} MB ({path}: tiny Shakespeare repeated)")
        for token, normalize in (("char", "none"), ("char", "d2l"), ("word", "d2l"), ("word", "none")):
            for max_tokens in (10000, 0):
                out = subprocess.run([sys.executable, "-c", CHILD, path, token, str(max_tokens), normalize],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout)
                print(f"{token:>4} {normalize:>4} max_tokens={max_tokens:<6}: {r['seconds']:5.1f} s, peak "
                      f"+{r['peak_mb']:6.0f} MB, ids {r['ids_mb']:5.0f} MB ({r['tokens']:,} tokens, vocab "
                      f"{r['vocab']:,})")


if __name__ == "__main__":
    main()
