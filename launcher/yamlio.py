"""YAML in and out, through libyaml's C parser and emitter when PyYAML has them.

The pure-Python ones are several times slower at reading and writing a config.yaml (on every
start, in every worker, at every checkpoint) than the C ones, which give the same results for the
plain mappings, lists and scalars of our files. Only the safe subset, either way.

:func:`load` also refuses valid YAML that no config can be (:class:`RefusedYAML`): a key given
twice in one mapping (YAML says keys are unique; PyYAML keeps the last one silently), an alias
used inside the value it names (a value that contains itself), aliases that expand to more than
``EXPANSION_LIMIT`` values (a "billion laughs" file: a few lines that stand for 10**9 values),
and nesting deeper than ``DEPTH_LIMIT``. The check walks the parsed nodes once, before any value
is built, at a small fraction of the parse's own cost.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
YAMLError = yaml.YAMLError

EXPANSION_LIMIT = 100_000  # values reached again through aliases (a config has a few hundred in all)
DEPTH_LIMIT = 100  # a config nests sections three or four levels deep
_MERGE_TAG = "tag:yaml.org,2002:merge"


class RefusedYAML(YAMLError):
    """Valid YAML that is not a config: ``problem`` and ``fix`` read as "<text> <problem>; <fix>",
    and ``where`` (" (line N)", " (lines N and M)") tells where in a file."""

    def __init__(self, problem: str, fix: str, where: str = "") -> None:
        super().__init__(f"{problem}{where}; {fix}")
        self.problem, self.fix, self.where = problem, fix, where


def load(text: str) -> Any:
    """``yaml.safe_load``, faster, and refusing what :class:`RefusedYAML` describes."""
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _check(root: Node) -> None:
    seen: set[int] = set()  # nodes visited once (an alias is the same node object again)
    on_path: set[int] = set()  # nodes that contain the current one
    repeats = 0

    def walk(node: Node, path: str, depth: int) -> None:
        nonlocal repeats
        if depth > DEPTH_LIMIT:
            raise RefusedYAML(
                f"nests deeper than {DEPTH_LIMIT} levels",
                "a config is a few levels of sections",
                f" (line {_line(node)})",
            )
        key = id(node)
        if key in on_path:
            raise RefusedYAML(
                f"uses an alias inside the value it names{f' ({path})' if path else ''}",
                "a value cannot contain itself",
                f" (line {_line(node)})",
            )
        if key in seen:
            repeats += 1
            if repeats > EXPANSION_LIMIT:
                raise RefusedYAML(
                    f"expands to more than {EXPANSION_LIMIT} values through its aliases",
                    "write the values out, or use fewer aliases",
                )
        else:
            seen.add(key)
        if isinstance(node, ScalarNode):
            return
        on_path.add(key)
        if isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{path}[{i}]", depth + 1)
        elif isinstance(node, MappingNode):
            first: dict[tuple[str, str], int] = {}
            for k, v in node.value:
                if k.tag == _MERGE_TAG:  # `<<: *defaults`: keys given here may override the merged ones
                    walk(v, path, depth + 1)
                    continue
                if isinstance(k, ScalarNode):
                    name = f"{path}.{k.value}" if path else k.value
                    if (k.tag, k.value) in first:
                        raise RefusedYAML(
                            f"sets {name!r} twice",
                            "keep one of them",
                            f" (lines {first[k.tag, k.value]} and {_line(k)})",
                        )
                    first[k.tag, k.value] = _line(k)
                else:
                    name = path
                    walk(k, path, depth + 1)
                walk(v, name, depth + 1)
        on_path.discard(key)

    walk(root, "", 0)


def dump(data: Any) -> str:
    """Block style for mappings, flow style for lists of scalars, keys in their order."""
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False, default_flow_style=None)
