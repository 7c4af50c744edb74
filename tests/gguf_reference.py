"""The ``gguf`` package's reading of a GGUF file's metadata as plain Python values.

The independent reference that ``lowbit.core.gguf_file``'s own parser is checked against.
"""

from __future__ import annotations

from typing import Any

import gguf
from gguf import GGUFValueType


def read_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """Read every key-value field of a GGUF file as plain Python values.

    Strings become ``str``, integers ``int``, floats ``float``, booleans ``bool`` and
    arrays lists of those (so ``tokenizer.ggml.tokens`` is a ``list[str]``, ``scores`` a
    ``list[float]`` and ``token_type`` a ``list[int]``). The reader's header pseudo-fields
    (``GGUF.version``, ``GGUF.tensor_count``, ``GGUF.kv_count``) are included as ints.
    Nested arrays, which no tokenizer or model key uses, come back flattened, as gguf-py
    itself reads them.

    Args:
        reader: An open ``gguf.GGUFReader``.

    Returns:
        A new dict from field name to value, in file order.

    Raises:
        Nothing of its own; the reader has already parsed and validated the fields.
    """
    return {name: _field_value(field) for name, field in reader.fields.items()}


def _text(raw: Any) -> str:
    # Some converters wrote vocabularies that are not valid UTF-8; a replacement
    # character is better than refusing the whole file.
    return raw.tobytes().decode("utf-8", errors="replace")


def _field_value(field: gguf.ReaderField) -> Any:
    if not field.types:
        return None
    main = field.types[0]
    if main == GGUFValueType.STRING:
        return _text(field.parts[field.data[0]])
    if main != GGUFValueType.ARRAY:
        # .tolist() turns numpy scalars into int, float or bool.
        return field.parts[field.data[0]].tolist()[0]
    if field.types[-1] == GGUFValueType.STRING:
        return [_text(field.parts[i]) for i in field.data]
    return [v for i in field.data for v in field.parts[i].tolist()]
