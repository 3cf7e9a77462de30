"""JSON files are UTF-8: the bytes of one as text, with the byte order marks named.

``json.loads`` given bytes guesses UTF-16 or UTF-32 from their first bytes, so a damaged or
foreign file could decode to garbage or not, depending on its length. Every JSON file the
project reads (weights, configs, run records) goes through :func:`utf8_text` instead.
"""

from __future__ import annotations

import codecs
import json

# Longest first: the UTF-32 little-endian mark begins with the UTF-16 one.
_FOREIGN_MARKS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                  (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


def utf8_text(raw: bytes) -> str:
    """``raw`` decoded as UTF-8, a leading UTF-8 byte order mark dropped.

    Raises ValueError, its message naming what the bytes are, for a file that starts with a
    UTF-16 or UTF-32 byte order mark (the 2 or 4 bytes some editors put first to say which
    of those encodings the file is in) and for bytes that are not UTF-8.
    """
    for mark, name in _FOREIGN_MARKS:
        if raw.startswith(mark):
            raise ValueError(f"not UTF-8 text: it starts with a {name} byte order mark (it was "
                             f"saved as {name}); save it as UTF-8")
    body = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 text (byte {len(raw) - len(body) + error.start})") from None


def json_text(value, **kwargs) -> str:
    """``json.dumps`` with characters written as they are, unless ``value`` holds a lone
    surrogate (a file name that is not UTF-8, decoded by ``os.fsdecode``), which UTF-8
    cannot store: then everything beyond ASCII is escaped."""
    text = json.dumps(value, ensure_ascii=False, **kwargs)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, **kwargs)
    return text
