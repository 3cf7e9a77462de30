"""Text, no JAX: the vocabulary (:mod:`~lstm_fn.text.vocab`), corpora
(:mod:`~lstm_fn.text.corpus`), and splits and the streams training and evaluation read
(:mod:`~lstm_fn.text.streams`)."""
