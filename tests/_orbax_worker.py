"""One process of the two-process orbax check (run by tests/test_distributed.py).

  python tests/_orbax_worker.py PROCESS_ID NUM_PROCESSES PORT CHECKPOINT_DIR

Every process saves, through one orbax CheckpointManager on a shared directory,
the replicated train state and a row-sharded hidden state whose rows differ per
device, restores both into the same shardings, and prints one JSON line: was it
saved, do values (every local shard), shardings and tree structure come back.
"""

import json
import os
import sys

pid, nproc, port, ckpt_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]

from lstm_jax import distributed  # noqa: E402

distributed.initialize(f"127.0.0.1:{port}", nproc, pid, timeout_s=60)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from lstm_jax.configs import get_base_config  # noqa: E402
from lstm_jax.experiment import Experiment  # noqa: E402

c = get_base_config()
c.num_hiddens, c.batch_size, c.num_steps, c.data.max_tokens = 16, 8, 10, 2000
exp = Experiment.from_config(c)
sh = exp.shardings
ts = distributed.place(exp.init_train_state(), sh.replicated)
rows = jnp.arange(c.batch_size, dtype=jnp.float32)[:, None]
lstm_state = jax.jit(lambda s: jax.tree.map(lambda a: a + rows, s), out_shardings=sh.rows)(
    distributed.place(exp.model.initial_state(c.batch_size), sh.rows))
item = {"train_state": ts, "lstm_state": lstm_state}

with ocp.CheckpointManager(os.path.abspath(ckpt_dir)) as mngr:
    saved = mngr.save(1, args=ocp.args.StandardSave(item))
    mngr.wait_until_finished()
    back = mngr.restore(1, args=ocp.args.StandardRestore(
        jax.tree.map(ocp.utils.to_shape_dtype_struct, item)))


def same_shards(a, b):
    return all(np.array_equal(np.asarray(x.data), np.asarray(y.data))
               for x, y in zip(a.addressable_shards, b.addressable_shards))


leaves, back_leaves = jax.tree.leaves(item), jax.tree.leaves(back)
print(json.dumps({
    "process": pid,
    "saved": bool(saved),
    "structure_equal": jax.tree.structure(item) == jax.tree.structure(back),
    "values_equal": all(same_shards(a, b) for a, b in zip(leaves, back_leaves)),
    "shardings_equal": all(a.sharding.is_equivalent_to(b.sharding, a.ndim)
                           for a, b in zip(leaves, back_leaves)),
}), flush=True)
