"""YAML to plain data, remembering the line of every key and item (PyYAML's node API).

Invariants: the result holds only what ``yaml.SafeLoader`` constructs (no arbitrary tags);
mapping keys are strings and unique (a duplicate key is an error, not a silent override);
``lines[loc]`` is the 1-based line of the key or item at ``loc`` (``()`` is the document);
an empty or comment-only document is ``None`` with ``lines == {(): 1}``. Error locations are
written in one style everywhere, ``egress[0].action`` (``format_loc``).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

__all__ = ["Loc", "format_loc", "parse_yaml"]

# libyaml's parser when present (~20x faster on large files), with the same safe constructor.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Loc = tuple[str | int, ...]


def format_loc(loc: Loc) -> str:
    """``("egress", 0, "action")`` -> ``egress[0].action``; ``()`` -> ``(document)``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


class _Problem(Exception):
    def __init__(self, line: int, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.line, self.loc, self.message = line, loc, message


_YAML12_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_MAX_NODES = 200_000  # far above any real policy; stops alias bombs ("billion laughs")
_MAX_DEPTH = 32


def _build(
    loader: Any, node: yaml.Node, loc: Loc, lines: dict[Loc, int], count: list[int]
) -> Any:
    count[0] += 1
    if count[0] > _MAX_NODES or len(loc) > _MAX_DEPTH:
        raise _Problem(node.start_mark.line + 1, loc, "document too large or too deeply nested "
                       "(anchors and aliases expanding?)")
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                raise _Problem(line, loc, "keys must be plain names")
            key = str(key_node.value)
            if key in out:
                raise _Problem(line, (*loc, key), f"duplicate key {key!r}")
            lines[(*loc, key)] = line
            out[key] = _build(loader, value_node, (*loc, key), lines, count)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            lines[(*loc, index)] = item.start_mark.line + 1
            items.append(_build(loader, item, (*loc, index), lines, count))
        return items
    if (isinstance(node, yaml.ScalarNode) and not node.style  # plain: None, or "" from libyaml
            and node.tag == "tag:yaml.org,2002:str" and _YAML12_FLOAT.fullmatch(node.value)):
        # PyYAML follows YAML 1.1, which reads an exponent without a dot (``1e-05``, how
        # Python and most tools print small numbers) as text; YAML 1.2 and every other reader
        # a user compares with read it as the number it looks like.
        return float(node.value)
    return loader.construct_object(node, deep=True)


def parse_yaml(text: str) -> tuple[Any, dict[Loc, int]]:
    """Return ``(data, lines)``; raise ``ValueError("LINE|message")`` on a syntax problem."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        lines: dict[Loc, int] = {(): 1}
        data = None if node is None else _build(loader, node, (), lines, [0])
    except _Problem as problem:
        where = format_loc(problem.loc) if problem.loc else ""
        raise ValueError(f"{problem.line}|{where}|{problem.message}") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise ValueError(f"{line}||YAML syntax error: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"1||YAML error: {err}") from None
    finally:
        loader.dispose()
    return data, lines
