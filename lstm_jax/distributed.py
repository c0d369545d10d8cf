"""Data parallelism over every device of every process, with ``jax.sharding``.

One 1-D :class:`~jax.sharding.Mesh` with a ``data`` axis spans all devices
(of all processes, after :func:`initialize`). A minibatch's batch rows, and the
hidden-state rows of the same sequence streams, are split along it; parameters
and optimizer state are replicated. The train step is the same jitted function
as on one device, compiled with these shardings: XLA inserts the gradient
all-reduce. On one device the mesh has one device and nothing changes.

Multi-process (multi-host) runs are JAX's own SPMD runtime: every process runs
the same program, calls :func:`initialize` first, builds the same epoch of
minibatches (a pure function of seed and epoch) and hands JAX only the rows its
own devices hold (:func:`place`). Only process 0 writes files or logs
(:func:`is_main_process`).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, Sharding

from lstm_jax.errors import UserError

DATA = "data"  # the mesh axis that batch rows are split along

# Read by main() when the flags are not given. JAX itself reads only
# JAX_COORDINATOR_ADDRESS (and detects Slurm, Open MPI, Kubernetes and Cloud TPU
# clusters by itself: --coordinator=auto).
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = (
    "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300,
               log: Callable[[str], None] | None = None) -> bool:
    """Join a multi-process run through ``jax.distributed.initialize``, if one is asked for.

    Asked for means: any argument given, or ``JAX_COORDINATOR_ADDRESS`` set.
    Missing arguments are read from ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; ``coordinator='auto'`` lets JAX
    detect a managed cluster (Slurm, Open MPI, ...). Must run before anything
    touches a JAX device. Returns whether it initialized.

    On CPU, cross-process collectives go through gloo (TCP); set here
    explicitly because jax versions before 0.5 had no default.

    JAX aborts the process (no exception) when the coordinator cannot be
    reached in time, so processes other than 0 first wait, up to ``timeout_s``,
    for its port to accept connections and raise a UserError if it never does.
    """
    env = os.environ
    coordinator = coordinator or env.get(ENV_COORDINATOR) or None
    if num_processes is None and env.get(ENV_NUM_PROCESSES):
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None and env.get(ENV_PROCESS_ID):
        process_id = _env_int(ENV_PROCESS_ID)
    if coordinator is None and num_processes is None and process_id is None:
        return False
    if num_processes == 1 and coordinator is None:
        return False  # --num_processes=1 alone: a plain single-process run
    if coordinator == "auto":
        kwargs = {}
    else:
        if coordinator is None or num_processes is None or process_id is None:
            raise UserError(
                "a multi-process run needs all of --coordinator=HOST:PORT, --num_processes=N and "
                f"--process_id=I (or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID}); "
                f"got coordinator={coordinator}, num_processes={num_processes}, process_id={process_id}")
        if ":" not in coordinator:
            raise UserError(f"--coordinator must be HOST:PORT (process 0's address), got {coordinator!r}")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise UserError(f"--process_id must be in 0..{num_processes - 1} and --num_processes >= 1, "
                            f"got process_id={process_id}, num_processes={num_processes}")
        kwargs = dict(coordinator_address=coordinator, num_processes=num_processes,
                      process_id=process_id)
        if log:
            log(f"process {process_id} of {num_processes}: joining coordinator {coordinator} "
                f"(waiting up to {timeout_s} s for all processes)")
        if process_id != 0:
            _wait_for_coordinator(coordinator, timeout_s)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(initialization_timeout=timeout_s, **kwargs)
    except (RuntimeError, ValueError) as e:  # jaxlib's errors subclass RuntimeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"jax.distributed.initialize failed (coordinator {coordinator}): {first}") from None
    return True


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return
        except (OSError, ValueError) as e:
            if time.monotonic() > deadline:
                raise UserError(
                    f"cannot reach the coordinator {address} within {timeout_s:.0f} s ({e}): start "
                    "process 0 with the same --coordinator, and check host, port and firewall") from None
        time.sleep(0.25)


def _env_int(name: str) -> int:
    try:
        return int(os.environ[name])
    except ValueError:
        raise UserError(f"${name} must be an integer, got {os.environ[name]!r}") from None


def is_main_process() -> bool:
    """Process 0: the one that writes logs, metrics, plots and checkpoints."""
    return jax.process_index() == 0


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all devices (every process's), axis ``data``.

    Auto axis types (GSPMD propagation under ``jit`` shardings): ``jax.make_mesh``
    defaults to Explicit axes in jax 0.10, which would change tracing semantics.
    """
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


def check_batch_size(batch_size: int, num_devices: int, field: str = "config.batch_size") -> None:
    """The global batch is split into equal row blocks, one per device."""
    if batch_size % num_devices == 0:
        return
    n = num_devices
    below, above = batch_size // n * n, (batch_size // n + 1) * n
    sizes = f"{below} or {above}" if below else f"{above}"
    raise UserError(
        f"{field}={batch_size} does not split evenly over {n} devices: the global batch size "
        f"must be a multiple of {n} (e.g. {sizes}; {above} gives {above // n} rows per device)")


class Shardings:
    """The three placements a data-parallel run needs, on one mesh."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh
        self.replicated = NamedSharding(mesh, P())  # parameters, optimizer state, scalars
        self.rows = NamedSharding(mesh, P(DATA))  # (B, ...): hidden state, held-out streams
        self.blocks = NamedSharding(mesh, P(None, DATA))  # (n, B, T): a block of minibatches

    @property
    def num_devices(self) -> int:
        return self.mesh.size


def place(tree: Any, shardings: Any) -> Any:
    """Put a pytree of host or device values onto ``shardings`` (a tree prefix).

    Arrays already placed so are returned as they are (no copy). Host values
    are cut up by JAX: each process transfers only the slices its own devices
    hold, so every process may pass the same full (global) value, as the
    data pipeline does. Replicated values must be equal on all processes.
    """
    return jax.tree.map(lambda s, sub: jax.tree.map(lambda x: _place(x, s), sub),
                        shardings, tree, is_leaf=lambda x: isinstance(x, Sharding) or x is None)


def _place(x, sharding: Sharding):
    if isinstance(x, jax.Array):
        if x.sharding.is_equivalent_to(sharding, x.ndim):
            return x
        if x.is_fully_addressable and not sharding.is_fully_addressable:
            x = np.asarray(x)  # a process-local value for a global array: cut up below
        else:
            return jax.device_put(x, sharding)
    x = np.asarray(x)
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def placed(fn: Callable, in_shardings: Any = None) -> Callable:
    """``fn`` (jitted or AOT-compiled) that first places its positional arguments.

    ``in_shardings`` defaults to a compiled function's own ``input_shardings``.
    """
    if in_shardings is None:
        in_shardings = fn.input_shardings[0]

    def call(*args):
        return fn(*place(tuple(args), tuple(in_shardings)))

    call.__wrapped__ = fn
    return call


def to_host(tree: Any) -> Any:
    """Replicated (or local) arrays as numpy on this process, e.g. params for prediction."""
    return jax.tree.map(np.asarray, tree)


def agree(flag: bool) -> bool:
    """Process 0's value of ``flag`` on every process: all stop (or go on) together."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def memory_bytes() -> int | None:
    """Memory a run may use: the first device's limit on an accelerator, else available RAM."""
    device = jax.local_devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        return stats.get("bytes_limit")
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def memory_name() -> str:
    device = jax.local_devices()[0]
    return "this machine" if device.platform == "cpu" else f"the {device.platform} ({device.device_kind})"
