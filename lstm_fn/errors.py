"""The project's own errors: what a user can get wrong, each a ``ValueError``.

Every layer raises these for bad input (a corpus, a config value, a run directory, a
checkpoint), and the command line shows them as one line with exit code 2 (see
:mod:`lstm_fn.cli.errors`). Anything else that escapes a command is a bug in lstm_fn.
A weights file that cannot be read raises :class:`reference_numpy.weights.WeightsError`,
which lives with the format so that numpy alone can read it.
"""

from __future__ import annotations


class LstmFnError(ValueError):
    """Bad input or a state of the files that a user can mend; the message is one line."""


class CorpusError(LstmFnError):
    """A corpus, a vocabulary or a text that cannot be used."""


class ConfigError(LstmFnError):
    """A setting that cannot be used.

    ``key`` names the setting in config-file spelling (``train.learning_rate``,
    ``model.hidden_size``) when one is at fault, so that the command line can name the
    option the user typed instead (:meth:`worded`); ``problem`` is the rest of the message.
    """

    def __init__(self, problem: str, key: str | None = None, prefix: str = ""):
        self.problem, self.key, self.prefix = problem, key, prefix
        super().__init__(self.worded(key))

    def worded(self, name: str | None) -> str:
        """The message with the setting called ``name`` (a key or an option)."""
        return f"{self.prefix}{name} {self.problem}" if name else f"{self.prefix}{self.problem}"


class RunError(LstmFnError):
    """A run directory, its outputs or its checkpoints that a run cannot use.

    ``resumable``: the run's checkpoints are whole and it can continue; the command line
    ends the message with the command that does it (``command``, when that is not the one
    that failed: the run is a fine-tune run, say)."""

    def __init__(self, message: str, *, resumable: bool = False, command: str | None = None):
        super().__init__(message)
        self.resumable, self.command = resumable, command


class CheckpointError(RunError):
    """Checkpoints exist but none can be used, or the folder holds something else."""
