"""The configuration reference, rendered from the pydantic model itself (``NodeConfig``): every
field with its type, constraints, default and description, section by section.

``radiomics-node config reference > docs/configuration.md`` writes the committed page; a test
fails when the page and the model differ, so the reference cannot go stale.
"""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from node.config import NodeConfig

CONSTRAINTS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="),
               ("min_length", "min length"), ("max_length", "max length"),
               ("pattern", "pattern"))

HEADER = """# Configuration reference

Generated from `node/config.py` by `radiomics-node config reference`; do not edit by hand (a
test compares this page with the model). One YAML file (`radiomics-node serve --config FILE`);
every field is optional and its default serves a single machine. Environment variables override
the file: `RADIOMICS_NODE_<FIELD>`, nested fields joined with `__`, e.g.
`RADIOMICS_NODE_LISTENER__PORT=11113`. Unknown keys are errors. Check a file, and everything it
points at, with `radiomics-node config check FILE`. An annotated example:
`deploy/radiomics-node.example.yaml`.

In the tables, `a[]` is each item of the list `a`, `a{}` each value of the mapping `a`.
"""


def _models_in(annotation: Any) -> list[tuple[str, type[BaseModel]]]:
    """The pydantic models an annotation holds, with the path suffix that reaches them
    (``""``, ``"[]"`` for list items, ``"{}"`` for mapping values)."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [("", annotation)]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list:
        return [("[]" + s, m) for s, m in _models_in(args[0])]
    if origin is dict:
        return [("{}" + s, m) for s, m in _models_in(args[1])]
    if origin in (Union, types.UnionType):
        return [found for arg in args for found in _models_in(arg)]
    return []


def _type(annotation: Any) -> str:
    """A short readable name of a field's type."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        limits = _constraints(args[1:])
        return _type(args[0]) + (f" ({limits})" if limits else "")
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type(a) for a in args)
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"mapping {_type(args[0])} to {_type(args[1])}"
    if annotation is type(None):
        return "null"
    if annotation is SecretStr:
        return "secret string"
    if annotation is Path:
        return "path"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation.__name__
    return getattr(annotation, "__name__", str(annotation))


def _constraints(metadata: Iterable[Any]) -> str:
    """``>= 1, pattern `...``` from annotated-types metadata."""
    found = []
    for item in metadata:
        for attribute, shown in CONSTRAINTS:
            value = getattr(item, attribute, None)
            if value is not None:
                found.append(f"{shown} `{value}`" if attribute == "pattern"
                             else f"{shown} {value}")
    return ", ".join(found)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [item.model_dump(mode="json", exclude_defaults=True) for item in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, SecretStr):
        return "(secret)"
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _summary(model: type[BaseModel]) -> str:
    """The first sentence of a model's docstring."""
    first = " ".join((inspect.getdoc(model) or "").split("\n\n")[0].split())
    return first.split(". ")[0].rstrip(".") + "."


def _section(path: str, model: type[BaseModel]) -> tuple[list[str], list[tuple[str, type]]]:
    """The Markdown of one model's fields, and the nested models still to document."""
    doc = inspect.getdoc(model) or ""
    title = f"`{path}`" if path else "Top level"
    lines = [f"## {title}", ""]
    if doc and model is not NodeConfig:
        lines += [" ".join(doc.split("\n\n")[0].split()), ""]
    lines += ["| field | type | default | description |", "|---|---|---|---|"]
    nested: list[tuple[str, type]] = []
    for name, field in model.model_fields.items():
        kind = _type(field.annotation)
        limits = _constraints(field.metadata)
        if limits:
            kind += f" ({limits})"
        full = f"{path}.{name}" if path else name
        sections = _models_in(field.annotation)
        described = field.description or (
            _summary(sections[0][1]) if sections else "")
        lines.append(f"| `{full}` | {_cell(kind)} | {_cell(_default(field))} | "
                     f"{_cell(described)} |")
        nested += [(full + suffix, sub) for suffix, sub in sections]
    return [*lines, ""], nested


def render_reference() -> str:
    """The whole reference page (Markdown)."""
    out = [HEADER]
    queue: list[tuple[str, type]] = [("", NodeConfig)]
    seen: set[str] = set()
    while queue:
        path, model = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        lines, nested = _section(path, model)
        out.append("\n".join(lines))
        queue += nested
    return "\n".join(out).rstrip() + "\n"
