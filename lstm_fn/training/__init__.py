"""Training on ids: the typed train state (:mod:`~lstm_fn.training.state`), the update step
(:mod:`~lstm_fn.training.step`), evaluation (:mod:`~lstm_fn.training.evaluate`),
optimizers and schedules (:mod:`~lstm_fn.training.optim`), the batch split over devices
(:mod:`~lstm_fn.training.parallel`), orbax checkpoints (:mod:`~lstm_fn.training.checkpoint`)
and the loop (:mod:`~lstm_fn.training.loop`), which reports to a
:class:`~lstm_fn.training.report.Reporter`."""
