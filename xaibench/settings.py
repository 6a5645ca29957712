"""One typed settings mechanism for every plugin: explainers, metrics, datasets, baselines, models.

A plugin's settings are a frozen pydantic model, the single source for validation at
construction, ``get_params()``, the protocol recorded with every score, the TOML checker
(and its JSON Schema) and ``xaibench list --details``. Classes declare it as a nested
``Settings`` class (fields documented by attribute docstrings); functions declare it by their
typed keyword-only parameters (documented in the docstring's ``Args:``), from which the same
kind of model is built once, at registration::

    class GradCAM(CAMExplainer):
        class Settings(CAMExplainer.Settings):
            relu: bool = True
            \"\"\"Keep only positive evidence.\"\"\"

    def iou(attr, batch, *, threshold: Literal["otsu", "mean"] = "otsu") -> Tensor:
        \"\"\"...
        Args:
            threshold: how the map is binarised.
        \"\"\"
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from .errors import SettingsError
from .util import close_matches


class Settings(BaseModel):
    """Base of every plugin's settings: frozen, unknown keys rejected, fields documented.

    Values keep their Python types (tuples stay tuples); :meth:`record` gives JSON-able data.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True,
                              arbitrary_types_allowed=True, protected_namespaces=())

    def record(self) -> dict[str, Any]:
        """The settings as plain JSON data (for protocols, hashes and reports); values that are
        not data (a module passed as ``layer``) are recorded by their ``repr``."""
        return self.model_dump(mode="json", fallback=repr)


_ARG_RE = re.compile(r"^\s{2,}(\w+)(?:\s*\(.*?\))?:\s*(.*)$")


def docstring_args(fn: Callable[..., Any]) -> dict[str, str]:
    """``name -> doc`` from a Google-style ``Args:`` section (continuation lines joined)."""
    doc = inspect.getdoc(fn) or ""
    out: dict[str, str] = {}
    in_args, current, indent = False, None, None
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:", "Settings:"):
            in_args, current = True, None
            continue
        if in_args:
            if line and not line.startswith(" "):  # next section
                in_args = False
                continue
            m = _ARG_RE.match(line)
            lead = len(line) - len(line.lstrip())
            if m and (indent is None or lead <= indent):
                indent, current = lead, m.group(1)
                out[current] = m.group(2).strip()
            elif current and line.strip():
                out[current] += " " + line.strip()
    return out


class _SignatureSettings(Settings):
    """Base of the settings built from a signature: their docs come from the docstring's ``Args:``
    as field descriptions, so pydantic's attribute-docstring reading is off. For a model made by
    ``create_model`` it has no class body to read and walks the calling frames with
    ``inspect.getmodule`` instead: 5.0 of the 6.3 s that loading every plugin took (35 models), paid
    again by every Ray worker at start-up."""

    model_config = ConfigDict(use_attribute_docstrings=False)


def settings_from_signature(fn: Callable[..., Any], *, name: str, skip: tuple[str, ...] = ()) -> type[Settings]:
    """A :class:`Settings` model from a function's keyword-only parameters (types, defaults, docs).

    Raises:
        TypeError: a keyword-only parameter has no default (settings must have one).
    """
    hints = typing.get_type_hints(fn, include_extras=True)
    docs = docstring_args(fn)
    fields: dict[str, Any] = {}
    from pydantic import Field
    for pname, p in inspect.signature(fn).parameters.items():
        if p.kind != p.KEYWORD_ONLY or pname in skip:
            continue
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"{name}: setting {pname!r} needs a default value")
        doc = {"description": docs[pname]} if pname in docs else {}  # else keep an Annotated Field's own
        fields[pname] = (hints.get(pname, Any), Field(p.default, **doc))
    model_name = "".join(part.capitalize() for part in re.split(r"[^0-9a-zA-Z]+", name)) + "Settings"
    return create_model(model_name, __base__=_SignatureSettings, **fields)


def _fmt_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(x) for x in loc)


def _allowed(field_info: Any) -> str:
    ann = getattr(field_info, "annotation", None)
    return f" (allowed: {_type_name(ann)})" if _literals(ann) else ""


def validate(model: type[Settings], params: dict[str, Any], who: str, at: str = "") -> Settings:
    """Build ``model`` from ``params``; on any problem raise :class:`SettingsError` listing each
    bad setting with its path (``at`` prefixes it), what was given and what is allowed."""
    try:
        return model(**params)
    except ValidationError as exc:
        problems = []
        fields = model.model_fields
        by_field: dict[str, list[dict[str, Any]]] = {}
        for err in exc.errors():
            loc = err.get("loc", ())
            by_field.setdefault(str(loc[0]) if loc else "", []).append(err)
        for key, errs in by_field.items():
            path = f"{at}.{key}" if at else key
            first = errs[0]
            if first.get("type") == "extra_forbidden":
                close = close_matches(key, list(fields))
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                problems.append((path, f"{who} has no setting {key!r}{hint} (accepted: {sorted(fields)})"))
            elif len(errs) > 1 and key in fields:  # a union: one line, with every accepted form
                problems.append((path, f"invalid value {first.get('input')!r}; allowed: "
                                       f"{_type_name(fields[key].annotation)}"))
            else:
                sub = _fmt_loc(first.get("loc", ())[1:])
                where = f"{path}.{sub}" if sub else path
                allowed = _allowed(fields[key]) if key in fields else ""
                problems.append((where, f"{first.get('msg')}, got {first.get('input')!r}{allowed}"))
        raise SettingsError(who, problems) from None


@dataclass(frozen=True)
class SettingDoc:
    """One setting for listings and docs: name, type, default and description."""

    name: str
    type: str
    default: Any
    doc: str


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _type_name(ann: Any) -> str:
    """A readable type: ``int >= 1 | (int >= 1, int >= 1)``, ``'otsu' | 'mean' | float in (0, 1)``."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is typing.Annotated:
        base, bounds = _type_name(args[0]), []
        for meta in args[1:]:
            for m in [meta, *getattr(meta, "metadata", [])]:
                for attr, sym in _BOUNDS:
                    if getattr(m, attr, None) is not None:
                        bounds.append(f"{sym} {getattr(m, attr)}")
        return f"{base} {' '.join(bounds)}".strip() if bounds else base
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in args)
    if origin is tuple:
        return "(" + ", ".join("..." if a is Ellipsis else _type_name(a) for a in args) + ")"
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def _literals(ann: Any) -> list[Any]:
    """Every Literal value anywhere in a (union / annotated) type."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return list(args)
    return [v for a in args for v in _literals(a)] if args else []


def describe(model: type[Settings]) -> list[SettingDoc]:
    """Every setting of ``model`` with its type, default and doc, in declaration order."""
    def name(f: Any) -> str:
        bounds = [f"{sym} {getattr(m, attr)}" for m in f.metadata for attr, sym in _BOUNDS
                  if getattr(m, attr, None) is not None]
        return " ".join([_type_name(f.annotation), *bounds])

    return [SettingDoc(k, name(f), f.default, (f.description or "").strip()) for k, f in model.model_fields.items()]


def json_schema(model: type[Settings]) -> dict[str, Any]:
    """The JSON Schema of a settings model (what a TOML ``params`` table may hold)."""
    return model.model_json_schema(mode="validation")


__all__ = ["Settings", "SettingDoc", "SettingsError", "describe", "docstring_args", "json_schema",
           "settings_from_signature", "validate"]
