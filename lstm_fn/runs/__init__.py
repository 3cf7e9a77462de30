"""A run directory: its plan (checks, no writes; :mod:`~lstm_fn.runs.plan`), its records
(``config.json`` and ``metrics.jsonl``; :mod:`~lstm_fn.runs.records`), resuming
(:mod:`~lstm_fn.runs.resume`), its lock, its loss plot, and the run itself
(:mod:`~lstm_fn.runs.run`)."""
