"""A run over several processes (hosts), on JAX's multi-controller runtime.

Every process runs the same loop on its own devices; the device mesh spans all of them
(``jax.devices()``), so a training step is one computation over the cluster, and the
gradients are averaged by its collectives. What the processes decide on the host (whether
to stop, the learning rate of a step planned from a clock, a validation loss) process 0
decides and shares (:func:`gather`), so no process leaves the loop while another waits in
a collective. Process 0 alone writes files and prints; checkpoints are written by all
together (orbax). With one process every function here is a no-op or the identity.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from lstm_fn.errors import RunError
from lstm_fn.training.parallel import batch_split

# Where process 0 of this run listens ({"address": "HOST:PORT"}), once this process has
# joined a run given one (a launcher's run may not say).
COORDINATOR: dict = {}


def processes() -> int:
    return jax.process_count()


def index() -> int:
    return jax.process_index()


def primary() -> bool:
    """Whether this process writes the run's files and prints (process 0)."""
    return index() == 0


def gather(values) -> np.ndarray:
    """float64 ``[processes, n]``: each process's ``values`` (``[n]``), row ``i`` from
    process ``i``; every process gets the same array."""
    values = np.atleast_1d(np.asarray(values, np.float64))
    if processes() == 1:
        return values[None]
    return np.asarray(multihost_utils.process_allgather(values)).reshape(processes(), -1)


def first_signal(signals: np.ndarray) -> int:
    """The first of the processes' signal numbers that is not 0 (0: none received)."""
    received = signals[signals > 0]
    return int(received[0]) if received.size else 0


def from_primary(value: float) -> float:
    """Process 0's ``value``, on every process."""
    return float(gather([value])[0, 0])


def failed(ok: bool) -> list[int]:
    """The processes where ``ok`` is false (every process gets the same list)."""
    return [int(i) for i in np.flatnonzero(gather([float(ok)])[:, 0] == 0)]


def check_same_corpus(digest: str) -> None:
    """RunError on every process unless all read a corpus with this SHA-256 (hex)."""
    rows = [bytes(row.astype(np.uint8)).hex()
            for row in gather(np.frombuffer(bytes.fromhex(digest), np.uint8))]
    differ = [i for i, theirs in enumerate(rows) if theirs != rows[0]]
    if differ:
        raise RunError(f"the corpus differs between processes: process {differ[0]} reads one "
                       f"with SHA-256 {rows[differ[0]][:16]}..., process 0 {rows[0][:16]}...; "
                       "every process must read the same file")


# What the errors of a collective whose peer is gone say (gloo's, the coordination
# service's).
LOST_CONTACT = ("Gloo", "Connection reset", "Connection closed", "coordination service",
                "UNAVAILABLE", "DEADLINE_EXCEEDED")


def lost_contact(error: BaseException) -> bool:
    """Whether ``error`` says that another process of the run is gone."""
    return any(text in str(error) for text in LOST_CONTACT)


def local_rows(mesh, batch_size: int) -> slice:
    """The streams (rows of the batch) this process's devices hold when the batch is split
    over ``mesh``: its devices are consecutive in the mesh, as ``jax.devices()`` orders
    them by process."""
    if mesh is None:
        return slice(0, batch_size)
    per_device = batch_size // mesh.size
    mine = [i for i, device in enumerate(mesh.devices.flat)
            if device.process_index == jax.process_index()]
    return slice(mine[0] * per_device, (mine[-1] + 1) * per_device)


def share(streams: int) -> slice:
    """The streams of an evaluation this process scores: its near-equal share when every
    process gets one at least, else all of them (each process scores the whole text)."""
    count = processes()
    if count == 1 or streams < count:
        return slice(0, streams)
    bounds = np.linspace(0, streams, count + 1).round().astype(int)
    return slice(int(bounds[index()]), int(bounds[index() + 1]))


def global_batch(mesh, local: np.ndarray):
    """A batch array split over ``mesh`` from the rows this process holds."""
    if processes() == 1:
        return local
    return jax.make_array_from_process_local_data(batch_split(mesh), local)


def host_value(leaf) -> np.ndarray:
    """A leaf's whole value as numpy on this process, also one spread over other
    processes' devices (gathered; a replicated one read from a local copy)."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        if leaf.sharding.is_fully_replicated:
            return np.asarray(leaf.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(leaf)


def local(tree):
    """``tree`` with every leaf on this process alone (a replicated leaf's local copy), for
    work each process does by itself: evaluation, samples, saving a model."""
    if processes() == 1:
        return tree
    return jax.tree.map(lambda leaf: leaf.addressable_data(0)
                        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable
                        and leaf.sharding.is_fully_replicated else leaf, tree)


def barrier(name: str) -> None:
    """Wait until every process gets here."""
    if processes() > 1:
        multihost_utils.sync_global_devices(name)
