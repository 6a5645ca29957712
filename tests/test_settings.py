"""Every plugin's settings are one typed, documented pydantic model (generated from the registries).

For each registered explainer, metric, dataset and baseline: it has a settings model; every
setting has a description; its defaults satisfy its own types; a choice (``Literal``) setting
rejects a wrong value at construction with a :class:`~xaibench.SettingsError` that lists the
allowed values; an unknown setting is rejected with a close-match hint. The checks are plain
functions, and ``test_checks_catch_*`` feed them deliberately broken models (untyped and
undocumented, a choice typed as str, a default outside its choices): the checks can fail.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union

import pytest
import torch
from pydantic import ConfigDict, TypeAdapter, ValidationError, create_model

import xaibench
from xaibench import SettingsError
from xaibench.settings import Settings, validate

REGISTRIES = {"explainer": xaibench.EXPLAINERS, "metric": xaibench.METRICS, "dataset": xaibench.DATASETS,
              "baseline": xaibench.BASELINES}
ENTRIES = ([("explainer", n) for n in xaibench.list_explainers()] + [("metric", n) for n in xaibench.list_metrics()]
           + [("dataset", n) for n in xaibench.list_datasets()] + [("baseline", n) for n in xaibench.list_baselines()])
NOTHING = object()
WRONG = "not-a-valid-choice"


def model_of(kind: str, name: str) -> type[Settings]:
    return REGISTRIES[kind].settings(name)


def undocumented(model: type[Settings]) -> list[str]:
    """Settings without a description (a field docstring or an ``Args:`` entry)."""
    return [k for k, f in model.model_fields.items() if not (f.description or "").strip()]


def literals(ann: Any) -> list[tuple[Any, ...]]:
    """The choices of every ``Literal`` inside an annotation (through Annotated, unions, tuples)."""
    if typing.get_origin(ann) is Literal:
        return [typing.get_args(ann)]
    return [lit for a in typing.get_args(ann) if a is not Ellipsis for lit in literals(a)]


def wrong_value(ann: Any) -> Any:
    """A value that puts a wrong choice where the annotation's first ``Literal`` is, else NOTHING."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Literal:
        return WRONG
    if origin is Annotated:
        return wrong_value(args[0])
    if origin in (Union, types.UnionType):
        for a in args:
            if (v := wrong_value(a)) is not NOTHING:
                return v
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis and (v := wrong_value(args[0])) is not NOTHING:
        return (v,)
    return NOTHING


def choice_problems(model: type[Settings], who: str = "plugin") -> list[str]:
    """Choice settings that accept a wrong value, or reject it without naming every allowed value."""
    out = []
    for key, f in model.model_fields.items():
        bad = wrong_value(f.annotation)
        if bad is NOTHING:
            continue
        try:
            validate(model, {key: bad}, who)
        except SettingsError as exc:
            missing = [c for lit in literals(f.annotation) for c in lit if repr(c) not in str(exc)]
            if key not in str(exc) or missing:
                out.append(f"{key}: message {str(exc)!r} lacks the setting or the choices {missing}")
        else:
            out.append(f"{key}: accepted {bad!r}")
    return out


def typo(key: str) -> str:
    """A near miss of ``key`` (one letter dropped, or doubled for one-letter keys)."""
    return key[:-1] if len(key) > 3 else key + key[-1]


def construct(kind: str, name: str, **params: Any) -> Any:
    """Build a plugin through its public constructor (baselines have none: validate their model)."""
    if kind == "explainer":
        return xaibench.create_explainer(name, torch.nn.Identity(), **params)
    if kind == "metric":
        return xaibench.create_metric(name, **params)
    if kind == "dataset":
        return xaibench.create_dataset(name, **params)
    return validate(model_of(kind, name), params, f"baseline {name!r}")


def _id(entry: tuple[str, str]) -> str:
    return f"{entry[0]}:{entry[1]}"


CHOICES = [(kind, name, key) for kind, name in ENTRIES
           for key, f in model_of(kind, name).model_fields.items() if wrong_value(f.annotation) is not NOTHING]


# ----------------------------------------------------------------------------- generated checks

@pytest.mark.parametrize("entry", ENTRIES, ids=_id)
def test_has_a_settings_model(entry):
    model = model_of(*entry)
    assert isinstance(model, type) and issubclass(model, Settings), f"{_id(entry)}: settings model is {model!r}"
    obj = REGISTRIES[entry[0]].get(entry[1])
    assert "defaults" not in getattr(obj, "__dict__", {}), f"{_id(entry)}: declare a typed Settings, not defaults"


@pytest.mark.parametrize("entry", ENTRIES, ids=_id)
def test_every_setting_is_documented(entry):
    assert undocumented(model_of(*entry)) == [], f"{_id(entry)}: document these settings (field docstring / Args:)"


def default_problems(model: type[Settings]) -> list[str]:
    """Defaults that their own field type rejects (pydantic does not validate defaults itself)."""
    out = []
    for key, f in model.model_fields.items():
        if f.is_required():
            continue
        try:
            TypeAdapter(Annotated[f.annotation, f], config=ConfigDict(arbitrary_types_allowed=True)).validate_python(f.default)
        except ValidationError as exc:
            out.append(f"{key}={f.default!r}: {exc.errors()[0]['msg']}")
    return out


@pytest.mark.parametrize("entry", ENTRIES, ids=_id)
def test_defaults_satisfy_their_own_types(entry):
    assert default_problems(model_of(*entry)) == []


@pytest.mark.parametrize("kind,name,key", CHOICES, ids=[f"{k}:{n}.{f}" for k, n, f in CHOICES])
def test_choice_setting_rejects_a_wrong_value_listing_the_allowed_ones(kind, name, key):
    model = model_of(kind, name)
    assert choice_problems(model) == []
    with pytest.raises(SettingsError) as err:  # and at construction, through the public API
        construct(kind, name, **{key: wrong_value(model.model_fields[key].annotation)})
    assert key in str(err.value)


@pytest.mark.parametrize("entry", ENTRIES, ids=_id)
def test_unknown_setting_is_rejected_with_a_close_match(entry):
    kind, name = entry
    keys = list(model_of(kind, name).model_fields)
    wrong = typo(keys[0]) if keys else "no_such_setting"
    with pytest.raises(SettingsError, match="has no setting") as err:
        construct(kind, name, **{wrong: 1})
    if keys:
        assert f"did you mean {keys[0]!r}" in str(err.value)


def test_choice_tables_match_their_literals():
    from xaibench.adapters.fcm.explainers import RULES, Rule
    from xaibench.datasets.faces import SYNDROMES, Syndrome

    assert set(RULES) == set(typing.get_args(Rule))
    assert set(SYNDROMES) == set(typing.get_args(Syndrome))


# ----------------------------------------------------------------------------- the checks can fail

def test_checks_catch_an_untyped_undocumented_model():
    legacy = create_model("LegacySettings", __base__=Settings, mode=(Any, "fast"))  # what a defaults dict gave
    assert undocumented(legacy) == ["mode"]
    assert wrong_value(legacy.model_fields["mode"].annotation) is NOTHING  # untyped: no choice enforced


def test_checks_catch_unenforced_or_unlisted_choices():
    class Loose(Settings):
        mode: str = "fast"
        """A choice typed as a plain str."""

    class Listed(Settings):
        mode: Literal["fast", "exact"] = "fast"
        """A real choice."""
        modes: tuple[Literal["a", "b"], ...] = ("a",)
        """Choices inside a tuple."""

    assert wrong_value(Loose.model_fields["mode"].annotation) is NOTHING
    assert choice_problems(Listed) == []

    class BadDefault(Settings):
        mode: Literal["fast", "exact"] = "quick"
        """A default outside its own choices."""

    assert default_problems(BadDefault) == ["mode='quick': Input should be 'fast' or 'exact'"]
    with pytest.raises(SettingsError, match=r"modes\.1"):
        validate(Listed, {"modes": ("a", WRONG)}, "t")
    assert wrong_value(Listed.model_fields["modes"].annotation) == (WRONG,)
