"""The configuration reference (``docs/configuration.md``), written from the pydantic models of
:mod:`posefleet.config`: every setting with its type, default and description, so the reference cannot say
other than the code. ``python -m posefleet.config_docs`` rewrites the file; a test fails when it is stale."""

from __future__ import annotations

import enum
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from posefleet.config import PipelineConfig
from posefleet.serving_config import AppConfig, ServingConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

HEADER = """# Configuration reference

Written by `python -m posefleet.config_docs` from the pydantic models in `posefleet/config.py` and
`posefleet/serving_config.py`: edit those, not this file (a test fails when it is stale).

Settings come from one place: a Serve config file's application `args` (`configs/serve-cpu.yaml`,
`configs/serve-gpu.yaml`), which name a preset (`configs/<preset>.yaml`) and override its `pipeline` keys.
`posefleet run` takes `--preset` and `--config FILE` (a YAML of `pipeline` keys). A stream's own settings
(`pipeline.streams.<id>`, or `PUT /v1/streams/{id}/settings`) override `pipeline.stream` for that stream.
Unknown keys are refused with the key named.
"""


def _type(annotation: Any) -> str:
    """A short, readable type: ``int``, ``a | b`` for literals, ``list[str]``, ``X | None``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type(a) for a in args)}]" if args else name
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "required"
    if isinstance(value, BaseModel):
        return "(below)"
    if isinstance(value, enum.Enum):
        value = value.value
    return f"`{json.dumps(value)}`"


def _model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds, directly or as ``X | None``."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _doc(model: type[BaseModel]) -> str:
    text = (model.__doc__ or "").strip()
    return " ".join(line.strip() for line in text.splitlines()) if text else ""


def _section(prefix: str, model: type[BaseModel], out: list[str], seen: set[str]) -> None:
    """One table for ``model`` at ``prefix``, then one for each model it holds (a dict of models: ``<id>``)."""
    rows, nested = [], []
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}"
        inner = _model(field.annotation)
        if typing.get_origin(field.annotation) is dict and (value := _model(typing.get_args(field.annotation)[-1])):
            nested.append((f"{path}.<id>", value))
        if inner is not None:
            nested.append((path, inner))
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} | {description} |")
    out += [f"## `{prefix}`", ""]
    if doc := _doc(model):
        out += [doc, ""]
    out += ["| setting | type | default | what it does |", "|---|---|---|---|", *rows, ""]
    for path, inner in nested:
        if path not in seen:
            seen.add(path)
            _section(path, inner, out, seen)


def render() -> str:
    out = [HEADER]
    top = [f"| `{n}` | {_type(f.annotation)} | {_default(f)} | {f.description or ''} |"
           for n, f in AppConfig.model_fields.items()]  # fmt: skip
    out += ["## Application `args`", "", _doc(AppConfig), "", "| setting | type | default | what it does |",
            "|---|---|---|---|", *top, ""]  # fmt: skip
    seen: set[str] = set()
    _section("pipeline", PipelineConfig, out, seen)
    _section("serving", ServingConfig, out, seen)
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render())
    print(f"wrote {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
