"""The model as pure JAX functions, no file I/O: cells (:mod:`~lstm_fn.nn.cells`), the one
stack walker and the loss (:mod:`~lstm_fn.nn.model`), the plain scan
(:mod:`~lstm_fn.nn.scan`), the hand-written BPTT (:mod:`~lstm_fn.nn.bptt`), generation of
ids (:mod:`~lstm_fn.nn.generate`) and the gradient check (:mod:`~lstm_fn.nn.gradcheck`).

Nothing is imported here: ``lstm_fn.nn.config`` loads without JAX (the command line reads
it to build its options).
"""
