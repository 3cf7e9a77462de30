"""JSON weights: read with full validation, write atomically. numpy only.

A file holds ``format``, ``version``, ``model`` (the five architecture keys of
``spec.MODEL_KEYS``), ``vocab`` (``vocab[i]`` is the character of token id ``i``), ``params``
(the tree of ``spec.param_shapes``) and optionally ``encoding`` (``"chars"``, the default, or
``"bytes"``, where ``vocab`` is ``chr(0) .. chr(255)`` standing for the 256 byte values).
Version 2 adds ``provenance``, where the model came from (``spec.PROVENANCE_KEYS``); a file
without it is version 1, so that older readers still read it.

Floats are written as the shortest decimal that reads back to the same float32, so a
float32 model round-trips bit for bit. Reading checks everything before returning anything:
a refused file raises :class:`WeightsError` naming the offending key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from reference_numpy import spec
from reference_numpy.atomic import atomic_write
from reference_numpy.jsontext import json_text, utf8_text


class WeightsError(ValueError):
    """A weights file that cannot be loaded; the message names the key at fault."""


def _reject_constant(name: str):
    raise WeightsError(f"non-finite number {name} in the file (JSON allows only finite numbers)")


def _check_positive_int(model: dict, key: str):
    value = model[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WeightsError(f"model.{key} must be a positive integer, got {value!r}")


def _check_model(model) -> dict:
    if not isinstance(model, dict):
        raise WeightsError("model must be an object")
    missing = [k for k in spec.MODEL_KEYS if k not in model]
    extra = sorted(set(model) - set(spec.MODEL_KEYS))
    if missing:
        raise WeightsError(f"model is missing key {missing[0]!r}")
    if extra:
        raise WeightsError(f"model has unknown key {extra[0]!r}")
    if model["cell"] not in spec.CELLS:
        raise WeightsError(f"model.cell {model['cell']!r} is not one of {', '.join(spec.CELLS)}")
    for key in spec.MODEL_KEYS[1:]:
        _check_positive_int(model, key)
    return model


def _check_vocab(vocab, model: dict, encoding: str) -> list[str]:
    if not isinstance(vocab, list) or not all(isinstance(s, str) and len(s) == 1 for s in vocab):
        raise WeightsError("vocab must be a list of one-character strings")
    if len(vocab) != model["vocab_size"]:
        raise WeightsError(
            f"vocab has {len(vocab)} entries but model.vocab_size is {model['vocab_size']}")
    seen = set()
    for i, symbol in enumerate(vocab):
        if symbol in seen:
            raise WeightsError(f"vocab[{i}] {symbol!r} is a duplicate entry")
        seen.add(symbol)
    if encoding == "bytes" and vocab != [chr(b) for b in range(256)]:
        raise WeightsError("vocab of a bytes-encoded model must be chr(0) .. chr(255) in order")
    return vocab


def _to_array(value, shape: tuple, key: str) -> np.ndarray:
    try:
        array = np.asarray(value)
        if isinstance(value, np.ndarray):
            pass  # an array from memory (any float dtype)
        elif array.dtype.kind in "iuf" and not _holds_bool(value):
            pass  # JSON numbers (true/false among numbers would become 1/0 here)
        elif array.dtype.kind == "O" and all(type(x) in (int, float) for x in array.flat):
            pass  # JSON integers beyond int64 (float64 overflow is refused below)
        else:  # strings, booleans, null or a ragged list in the file
            raise TypeError(array.dtype)
        array = array.astype(np.float64)
    except (TypeError, ValueError, OverflowError):
        raise WeightsError(f"{key} is not a rectangular array of numbers") from None
    if array.shape != shape:
        raise WeightsError(f"{key} has shape {list(array.shape)}, the model needs {list(shape)}")
    with np.errstate(over="ignore"):
        array = array.astype(np.float32)  # values beyond float32's range become inf
    if not np.all(np.isfinite(array)):
        raise WeightsError(f"{key} holds a value that is not a finite float32")
    return array


def _holds_bool(value) -> bool:
    """Whether a rectangular nested list of JSON numbers holds a true/false anywhere."""
    if not isinstance(value, list):
        return type(value) is bool
    if value and isinstance(value[0], list):
        return any(map(_holds_bool, value))
    return bool in map(type, value)


def _check_params(params, shapes, key: str = "params"):
    """Walk ``params`` alongside the expected ``shapes`` tree, converting leaves to arrays."""
    if isinstance(shapes, tuple):
        if isinstance(params, (dict, str)):
            raise WeightsError(f"{key} must be an array")
        return _to_array(params, shapes, key)
    if isinstance(shapes, list):
        if not isinstance(params, list) or len(params) != len(shapes):
            raise WeightsError(f"{key} must be a list of {len(shapes)} layers")
        return [_check_params(p, s, f"{key}[{i}]") for i, (p, s) in enumerate(zip(params, shapes))]
    if not isinstance(params, dict):
        raise WeightsError(f"{key} must be an object")
    missing = [k for k in shapes if k not in params]
    extra = sorted(set(params) - set(shapes))
    if missing:
        raise WeightsError(f"{key} is missing key {missing[0]!r}")
    if extra:
        raise WeightsError(f"{key} has unknown key {extra[0]!r}")
    return {k: _check_params(params[k], s, f"{key}.{k}") for k, s in shapes.items()}


class WeightsFile(NamedTuple):
    """A weights file's contents: float32 params, the ``model`` dict, the vocabulary, its
    encoding, and the provenance (``{}`` for a version 1 file)."""

    params: dict
    model: dict
    vocab: list
    encoding: str
    provenance: dict


def _check_provenance(provenance) -> dict:
    if not isinstance(provenance, dict):
        raise WeightsError("provenance must be an object")
    for key, kind in spec.PROVENANCE_KEYS.items():
        value = provenance.get(key)
        if value is None or (isinstance(value, kind) and not isinstance(value, bool)) or (
                kind is float and type(value) is int):
            continue
        what = {int: "an integer", float: "a number", str: "a string"}[kind]
        raise WeightsError(f"provenance.{key} must be {what}, got {value!r}")
    return dict(provenance)


def parse_weights(doc) -> tuple[dict, dict, list[str], str]:
    """Validate a decoded JSON document; returns ``(params, model, vocab, encoding)``."""
    return parse_weights_file(doc)[:4]


def parse_weights_file(doc) -> WeightsFile:
    """Validate a decoded JSON document, the provenance included."""
    if not isinstance(doc, dict):
        raise WeightsError("the file is not a JSON object")
    allowed = {"format", "version", "model", "vocab", "params", "encoding", "provenance"}
    for key in ("format", "version", "model", "vocab", "params"):
        if key not in doc:
            raise WeightsError(f"missing key {key!r}")
    if extra := sorted(set(doc) - allowed):
        raise WeightsError(f"unknown key {extra[0]!r}")
    if doc["format"] != spec.FORMAT:
        raise WeightsError(f"format is {doc['format']!r}, expected {spec.FORMAT!r}")
    version = doc["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise WeightsError(f"version must be a positive integer, got {version!r}")
    if version > spec.VERSION:
        raise WeightsError(f"version {version} is newer than this reader supports "
                           f"({spec.VERSION}); upgrade lstm_fn")
    encoding = doc.get("encoding", "chars")
    if encoding not in spec.ENCODINGS:
        raise WeightsError(f"encoding {encoding!r} is not one of {', '.join(spec.ENCODINGS)}")
    model = _check_model(doc["model"])
    vocab = _check_vocab(doc["vocab"], model, encoding)
    # the layer list first: the expected shapes are built per layer (num_layers may be 1e9)
    if not isinstance(doc["params"], dict):
        raise WeightsError("params must be an object")
    if "layers" not in doc["params"]:
        raise WeightsError("params is missing key 'layers'")
    layers = doc["params"]["layers"]
    if not isinstance(layers, list) or len(layers) != model["num_layers"]:
        raise WeightsError(f"params.layers must be a list of {model['num_layers']} layers")
    params = _check_params(doc["params"], spec.param_shapes(model))
    provenance = _check_provenance(doc.get("provenance", {}))
    return WeightsFile(params, dict(model), list(vocab), encoding, provenance)


def read_weights(path: str | os.PathLike) -> tuple[dict, dict, list[str], str]:
    """Load a weights file; returns ``(params, model, vocab, encoding)`` with float32 arrays.

    Raises :class:`WeightsError` (a ``ValueError``) naming the key for any invalid content,
    and ``OSError`` when the file cannot be read.
    """
    return read_weights_file(path)[:4]


def read_weights_file(path: str | os.PathLike) -> WeightsFile:
    """:func:`read_weights` with the file's provenance."""
    raw = Path(path).read_bytes()
    try:
        doc = json.loads(utf8_text(raw), parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise WeightsError(f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise WeightsError("not usable JSON (nested too deeply)") from None
    except ValueError as e:  # not UTF-8, or e.g. an integer with too many digits
        first = str(e).splitlines()[0]
        raise WeightsError(first if first.startswith("not UTF-8") else
                           f"not usable JSON ({first})") from None
    return parse_weights_file(doc)


def _json_array(array: np.ndarray) -> str:
    """Nested JSON list of a float32 array, each value its shortest float32 decimal."""
    if array.ndim == 1:
        return "[" + ",".join(map(str, array)) + "]"
    return "[" + ",\n".join(_json_array(row) for row in array) + "]"


def _json_tree(tree) -> str:
    if isinstance(tree, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_json_tree(v)}" for k, v in tree.items()) + "}"
    if isinstance(tree, (list, tuple)):
        return "[" + ",\n".join(_json_tree(v) for v in tree) + "]"
    return _json_array(np.asarray(tree, dtype=np.float32))


def write_weights(path: str | os.PathLike, params: dict, model: dict, vocab: list[str],
                  encoding: str = "chars", provenance: dict | None = None) -> None:
    """Validate and write a weights file atomically (see :func:`reference_numpy.atomic.atomic_write`).

    The document is checked with the same rules as reading, so a file that is written can
    always be read; non-finite parameters raise :class:`WeightsError` and nothing is written.
    With ``provenance`` the file is version 2, else version 1.
    """
    params = _check_params(as_numpy_tree(params), spec.param_shapes(_check_model(dict(model))))
    vocab = _check_vocab(list(vocab), model, encoding)
    if encoding not in spec.ENCODINGS:
        raise WeightsError(f"encoding {encoding!r} is not one of {', '.join(spec.ENCODINGS)}")
    header = {"format": spec.FORMAT, "version": 2 if provenance else 1, "model": model,
              "encoding": encoding, "vocab": vocab}
    if provenance:
        header["provenance"] = _check_provenance(provenance)
    text = json_text(header)[:-1] + ',\n"params": ' + _json_tree(params) + "}\n"
    atomic_write(path, text)


def as_numpy_tree(tree):
    """The same tree with every leaf as a numpy array (accepts any array-like leaves)."""
    if isinstance(tree, dict):
        return {k: as_numpy_tree(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [as_numpy_tree(v) for v in tree]
    return np.asarray(tree)
