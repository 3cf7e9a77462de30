"""Data parallelism: the batch split over devices, one gradient step for all of them.

A training step is ``B`` independent streams, so ``n`` devices each run ``B/n`` of them
(the carry is split the same way) and the gradients are averaged: the same update as on one
device, up to the order of float sums. The training loop splits over all devices JAX sees
(:func:`batch_mesh`): the GPUs of a multi-GPU machine, one device on a plain CPU machine.
:func:`use_cpu_cores` presents CPU cores as separate devices (the CLI does so when
``LSTM_FN_CPU_DEVICES`` is set; off by default, see ``benchmarks/README.md``); the tests use
it to run the split path.
"""

from __future__ import annotations

import os

import jax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lstm_fn.errors import ConfigError

AXIS = "data"
# Below this many streams per device the split costs more than it gains.
MIN_STREAMS_PER_DEVICE = 8


def use_cpu_cores(count: int | None = None) -> int:
    """Present ``count`` CPU devices to JAX (default: one per core, at most 8); returns it.

    Must run before JAX's first computation (JAX fixes its devices then); changes nothing
    on GPU machines, whose default devices are the GPUs.
    """
    count = count or max(1, min(os.cpu_count() or 1, 8))
    jax.config.update("jax_num_cpu_devices", count)
    return count


def batch_mesh(batch_size: int, devices: list | None = None) -> Mesh | None:
    """A one-axis mesh over the most devices that split ``batch_size`` evenly with at least
    :data:`MIN_STREAMS_PER_DEVICE` streams each; None when that is one device. A run of
    several processes uses every device of every process (ConfigError when the batch does
    not split over them evenly)."""
    devices = jax.devices() if devices is None else devices
    if jax.process_count() > 1:
        if batch_size % len(devices):
            raise ConfigError(f"{batch_size} streams do not split evenly over the "
                              f"{len(devices)} devices of {jax.process_count()} processes: "
                              f"give a multiple of {len(devices)}", "train.batch_size")
        return Mesh(devices, (AXIS,))
    count = max((n for n in range(1, len(devices) + 1)
                 if batch_size % n == 0 and batch_size // n >= MIN_STREAMS_PER_DEVICE),
                default=1)
    if count == 1:
        return None
    return Mesh(devices[:count], (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_split(mesh: Mesh) -> NamedSharding:
    """Split along the first axis (the batch) over the mesh."""
    return NamedSharding(mesh, P(AXIS))


def split_batch(value_and_grad_fn, mesh: Mesh):
    """``value_and_grad_fn(params, inputs, targets, carry, masks) -> ((loss, carry), grads)``
    run with every batch-shaped argument split over ``mesh``: each device differentiates
    the mean loss of its share, then loss and gradients are averaged over devices
    (``pmean``), which is the gradient of the mean over the whole batch. ``carry`` leaves
    are ``[B, H]``, masks ``[B, T, H]``."""
    def local(params, inputs, targets, carry, masks):
        (value, carry), grads = value_and_grad_fn(params, inputs, targets, carry, masks)
        return (lax.pmean(value, AXIS), carry), lax.pmean(grads, AXIS)

    batch = P(AXIS)
    # check_vma=False: the hand-written backward (a custom_vjp) returns per-device
    # gradients that pmean then averages explicitly.
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), batch, batch, batch, batch),
                         out_specs=((P(), batch), P()), check_vma=False)
