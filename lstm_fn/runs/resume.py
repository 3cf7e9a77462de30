"""Resuming a run: what its ``config.json`` recorded against what the command was given.

Only the stopping rules and ``--out`` may change (:func:`lstm_fn.config.resolve` decides
the settings); the command, the base model and the corpus's contents must be the run's own
(its batches depend on all three).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from lstm_fn.errors import RunError
from lstm_fn.text.corpus import corpus_location


def check_resume(command: str, run_dir: Path, base_path: Path | None, record: dict) -> None:
    """Refuse resuming a run with another command or another base model."""
    made_by = record.get("command") or ("fine-tune" if record.get("base") else "pretrain")
    if made_by != command:
        raise RunError(f"--resume: {str(run_dir)!r} is a {made_by} run; continue it",
                       resumable=True, command=made_by)
    if base_path is not None and record.get("base") and \
            Path(base_path).resolve() != Path(record["base"]).resolve():
        raise RunError(f"--resume: the run fine-tunes {record['base']!r}, not "
                       f"{str(base_path)!r}; leave out --from")


def check_same_text(record: dict, digest: str, location: str | None) -> None:
    """Refuse resuming on a corpus file that changed since the run started (its splits, and
    so the batches of the remaining steps, would differ)."""
    recorded = record.get("corpus_sha256")
    if recorded is not None and recorded != digest:
        raise RunError(f"--resume: the corpus {location!r} changed since the run started; "
                       "start a new run (fine-tune from its best model to keep what it "
                       "learned)")


def resumed_corpus(given: str | None, data_dir: Path, record: dict) -> str | None:
    """The corpus of a resumed run, as an absolute path (None: the built-in one): the
    recorded file, or the one given when it has the recorded contents (the file was moved)."""
    given_at = None if given is None else corpus_location(given, data_dir)
    recorded = record["corpus"]
    if given_at is not None and recorded is not None and not Path(recorded).is_absolute() and \
            Path(given_at).name == Path(recorded).name:
        return given_at  # recorded relative to another folder (older config.json files)
    if given_at is not None and recorded is not None and Path(given_at).is_file() and \
            record.get("corpus_sha256") == hashlib.sha256(Path(given_at).read_bytes()).hexdigest():
        return given_at  # the run's text, moved or renamed
    if given_at is None and recorded is not None and Path(recorded).is_absolute() and \
            not Path(recorded).exists():
        raise RunError(f"--resume: the run's corpus {recorded!r} is gone; if it moved, pass "
                       "its new path as CORPUS")
    location = corpus_location(recorded, data_dir)
    if given_at is not None and given_at != location:
        name = repr(recorded) if recorded else "the built-in corpus"
        raise RunError(f"--resume: the run trains on {name}, not {given!r}")
    return location
