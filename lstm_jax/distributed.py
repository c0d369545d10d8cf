"""Data parallelism over every device of every process, with ``jax.sharding``.

Batch rows (and the hidden-state rows of their sequence streams) are split along one 1-D mesh axis,
``data``; parameters and optimizer state are replicated. The train step stays the jitted function it
is on one device, compiled with these shardings, so XLA inserts the gradient all-reduce and one device
is no special case. Several processes run the same program (JAX's SPMD runtime), build the same
minibatches and each hands JAX only the rows its own devices hold.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, Sharding

from lstm_jax.errors import UserError

DATA = "data"  # the mesh axis that batch rows are split along


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               timeout_s: int = 300, log: Callable[[str], None] | None = None) -> bool:
    """Join a multi-process run if asked to (before anything touches a device); say if it did.

    ``coordinator='auto'``: JAX detects the cluster (Slurm, Open MPI, Kubernetes, Cloud TPU or
    $JAX_COORDINATOR_ADDRESS), a given count or id overriding what it finds; otherwise all three are
    needed. They are checked here: a typo is one error naming the flag, not a traceback or a hang. JAX
    retries the coordinator for ``timeout_s`` and then aborts the process: hence the log line first.
    """
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    if all(value is None for value in given.values()):
        return False
    if coordinator != "auto":
        if missing := [f"--{flag}" for flag, value in given.items() if value is None]:
            raise UserError("a multi-process run needs --coordinator=HOST:PORT, --num_processes=N and "
                            f"--process_id=I, or --coordinator=auto on a cluster; missing {', '.join(missing)}")
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"--coordinator must be HOST:PORT (process 0's address), got {coordinator!r}")
    if num_processes is not None and num_processes < 1:
        raise UserError(f"--num_processes must be at least 1, got {num_processes}")
    if process_id is not None and not 0 <= process_id < (num_processes or process_id + 1):
        bound = f"in 0..{num_processes - 1}" if num_processes else "at least 0"
        raise UserError(f"--process_id must be {bound}, got {process_id}")
    where = ("the cluster JAX detects" if coordinator == "auto"
             else f"coordinator {coordinator} as process {process_id} of {num_processes}")
    if log:
        log(f"joining {where} (waiting up to {timeout_s} s for all processes)")
    try:
        jax.distributed.initialize(None if coordinator == "auto" else coordinator, num_processes,
                                   process_id, initialization_timeout=timeout_s)
    except (RuntimeError, ValueError) as e:  # jaxlib's errors subclass RuntimeError
        first = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise UserError(f"jax.distributed.initialize failed, joining {where}: {first}") from None
    return True


def is_main_process() -> bool:
    """Process 0 writes logs, metrics, plots and checkpoints, so they exist once."""
    return jax.process_index() == 0


def make_mesh(devices=None) -> Mesh:
    """Auto axis types: ``jax.make_mesh`` defaults to Explicit ones, which change tracing."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (DATA,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def describe(devices=None) -> str:
    """``cpu``, ``4 x cpu``, ``gpu (NVIDIA H200)``, ``8 x gpu (...), 2 processes``."""
    devices = list(jax.devices() if devices is None else devices)
    platform, kind = devices[0].platform, devices[0].device_kind
    text = platform if len(devices) == 1 else f"{len(devices)} x {platform}"
    if kind and kind.lower() != platform.lower():
        text += f" ({kind})"
    processes = len({d.process_index for d in devices})
    return text + (f", {processes} processes" if processes > 1 else "")


def check_batch_size(batch_size: int, n: int, field: str = "config.batch_size") -> None:
    """Each device gets an equal block of rows; say which sizes would work."""
    if batch_size % n:
        below, above = batch_size // n * n, (batch_size // n + 1) * n
        raise UserError(
            f"{field}={batch_size} does not split evenly over {n} devices: the global batch size "
            f"must be a multiple of {n} (e.g. {f'{below} or ' if below else ''}{above}; "
            f"{above} gives {above // n} rows per device)")


class Shardings:
    """The three placements a data-parallel run needs, on one mesh; equal (and hashable) by
    mesh, so that jitted steps can take them as a static argument."""

    def __init__(self, mesh: Mesh):
        self.mesh, self.num_devices = mesh, mesh.size
        self.replicated = NamedSharding(mesh, P())  # parameters, optimizer state, scalars
        self.rows = NamedSharding(mesh, P(DATA))  # (B, ...): hidden state, held-out streams
        self.blocks = NamedSharding(mesh, P(None, DATA))  # (n, B, T): a block of minibatches

    def __eq__(self, other) -> bool:
        return isinstance(other, Shardings) and self.mesh == other.mesh

    def __hash__(self) -> int:
        return hash(self.mesh)


def place(tree: Any, shardings: Any) -> Any:
    """Put host or device values onto ``shardings`` (a tree prefix of ``tree``); arrays already placed
    so are not copied. Every process may pass the same full (global) host value, as the data pipeline
    does: each transfers only the slices its own devices hold."""
    return jax.tree.map(lambda s, sub: jax.tree.map(lambda x: _place(x, s), sub),
                        shardings, tree, is_leaf=lambda x: isinstance(x, Sharding) or x is None)


def _place(x, sharding: Sharding):
    if isinstance(x, jax.Array):
        if x.sharding.is_equivalent_to(sharding, x.ndim):
            return x
        if not x.is_fully_addressable or sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        # else a process-local value for a global array: cut up below
    x = np.asarray(x)
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def agree(flag: bool) -> bool:
    """Process 0's ``flag`` on every process, so that all stop (or go on) together."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))
