"""Look inside a model: :func:`~lstm_fn.inspect.analysis.inspect` measures what a trained
model does on a text (surprise, states, gates, units that follow the text, gradient flow);
:mod:`~lstm_fn.inspect.page` writes it as one self-contained HTML page and
:mod:`~lstm_fn.inspect.figures` as PNG charts and an ``.npz`` of arrays."""
