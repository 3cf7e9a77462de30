"""Resuming a run: what its ``config.json`` recorded against what the command was given.

Only the stopping rules and ``--out`` may change; the command, the base model and the
corpus's contents must be the run's own (its batches depend on all three).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from lstm_fn import data
from lstm_fn.config import STOPPING_RULES, ConfigError, TrainConfig
from lstm_fn.console import log
from lstm_fn.loop import resume_command
from reference_numpy.atomic import atomic_write

if TYPE_CHECKING:
    from lstm_fn.run import RunSpec

# Options that may change when a run is resumed: they say when to stop, not how to train.
RESUMABLE = STOPPING_RULES
TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def check_resume(spec: RunSpec, saved: dict) -> None:
    """Refuse resuming a run with another command or another base model."""
    made_by = saved.get("command") or ("fine-tune" if saved.get("base") else "pretrain")
    if made_by != spec.command:
        raise ConfigError(f"--resume: {str(spec.run_dir)!r} is a {made_by} run; continue it "
                          f"with `{resume_command(made_by, spec.run_dir)}`")
    if spec.base_path is not None and saved.get("base") and \
            Path(spec.base_path).resolve() != Path(saved["base"]).resolve():
        raise ConfigError(f"--resume: the run fine-tunes {saved['base']!r}, not "
                          f"{str(spec.base_path)!r}; leave out --from")


def check_same_text(saved: dict, digest: str, location: str | None) -> None:
    """Refuse resuming on a corpus file that changed since the run started (its splits, and
    so the batches of the remaining steps, would differ)."""
    recorded = saved.get("corpus_sha256")
    if recorded is not None and recorded != digest:
        raise ConfigError(f"--resume: the corpus {location!r} changed since the run started; "
                          "start a new run (fine-tune from its best model to keep what it "
                          "learned)")


def corpus_location(spec: RunSpec, saved: dict | None) -> str | None:
    """The corpus's absolute path; on a resume the run's own, which a given corpus must be:
    the recorded file, or one with the recorded contents (the file was moved)."""
    given = None if spec.corpus is None else data.corpus_location(spec.corpus, spec.data_dir)
    if saved is None:
        return given
    recorded = saved["corpus"]
    if given is not None and recorded is not None and not Path(recorded).is_absolute() and \
            Path(given).name == Path(recorded).name:
        return given  # recorded relative to another folder (older config.json files)
    if given is not None and recorded is not None and Path(given).is_file() and \
            saved.get("corpus_sha256") == hashlib.sha256(Path(given).read_bytes()).hexdigest():
        return given  # the run's text, moved or renamed
    if given is None and recorded is not None and Path(recorded).is_absolute() and \
            not Path(recorded).exists():
        raise ConfigError(f"--resume: the run's corpus {recorded!r} is gone; if it moved, pass "
                          "its new path as CORPUS")
    location = data.corpus_location(recorded, spec.data_dir)
    if given is not None and given != location:
        name = repr(recorded) if recorded else "the built-in corpus"
        raise ConfigError(f"--resume: the run trains on {name}, not {spec.corpus!r}")
    return location


def keep_best_at_new_out(spec: RunSpec, saved: dict) -> None:
    """A resume given another ``--out`` starts it with the run's best model so far."""
    old = Path(saved.get("out") or spec.default_out)
    if old.exists() and not spec.out.exists() and old.resolve() != spec.out.resolve():
        atomic_write(spec.out, old.read_bytes())
        log(f"copied the best model so far from {old} to {spec.out}")


def resumed_config(spec: RunSpec, saved: dict) -> tuple[dict, TrainConfig]:
    """The saved run's model and train config, with only the stopping rules overridable."""
    for key, value in spec.model.items():
        if saved["model"].get(key) != value:
            raise ConfigError(f"--resume: model.{key} is {saved['model'].get(key)!r} in the run, "
                              f"{value!r} was given")
    train = {**TRAIN_DEFAULTS, **saved["train"]}  # a run recorded before a field existed
    given = dataclasses.asdict(spec.train)
    for key, value in given.items():
        value = list(value) if isinstance(value, tuple) else value
        if key not in RESUMABLE and value != train[key] and key in spec.train_given:
            raise ConfigError(f"--resume: train.{key} is {train[key]!r} in the run, "
                              f"{value!r} was given")
    train.update({k: given[k] for k in RESUMABLE if k in spec.train_given})
    return saved["model"], TrainConfig(**train)
