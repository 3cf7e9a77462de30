"""Checks before a run writes anything: memory, room on disk, leftovers of a killed run."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from typing import TYPE_CHECKING

from lstm_fn.config import ConfigError
from lstm_fn.model import ModelConfig

if TYPE_CHECKING:
    from lstm_fn.run import RunSpec


def check_memory(cfg: ModelConfig) -> None:
    """Refuse a model whose parameters, gradients and optimizer moments alone (four float32
    copies) would not fit in this machine's memory."""
    needed = cfg.num_params * 16
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(
        os, "sysconf") else None
    if total and needed > total:
        raise ConfigError(f"the model has {cfg.num_params:,} parameters, about "
                          f"{needed / 2**30:,.0f} GiB to train; this machine has "
                          f"{total / 2**30:,.0f} GiB: lower --hidden-size, --embed-size or "
                          "--layers")


def check_output_room(spec: RunSpec, cfg: ModelConfig) -> None:
    """Fail before training when the outputs cannot be written."""
    for folder in (spec.out.parent, spec.run_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OSError(f"cannot create the output folder {str(folder)!r}: "
                          f"{error.strerror or error}") from None
        if not os.access(folder, os.W_OK):
            raise OSError(f"cannot write to {str(folder)!r}: permission denied")
        try:  # a real file: permission bits alone can mislead (root, read-only mounts)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise OSError(f"cannot write to {str(folder)!r}: {error.strerror or error}") from None
    # JSON ~12 bytes per parameter; each checkpoint ~3 float32 copies (params, Adam moments).
    needed = cfg.num_params * (12 + 12 * (spec.train.keep_checkpoints + 1)) + (1 << 20)
    free = shutil.disk_usage(spec.run_dir).free
    if free < needed:
        raise OSError(f"not enough disk space in {str(spec.run_dir)!r}: {free >> 20} MiB free, "
                      f"this run needs about {needed >> 20} MiB")


def remove_stale_temp_files(spec: RunSpec) -> None:
    """Delete the temp files of atomic writes cut short by a kill -9 (``.NAME.*.tmp``)."""
    for target in (spec.out, spec.run_dir / "config.json", spec.run_dir / "metrics.jsonl"):
        for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
            stale.unlink(missing_ok=True)
