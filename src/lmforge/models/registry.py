"""Model families by name: which config class, model class, presets and objectives go together.

A model directory's `config.json` names its family (`"family": "gpt"`, `"bert"`, `"t5"`), and a
run file's model section may name one too (or a preset, which implies it). Everything that has to
build a model without knowing its family (loading, pre-training, conversion) asks this registry.

Each family module defines a module-level `FAMILY = Family(...)`; the registry imports a family's
module the first time it is asked for, so importing lmforge does not import every model.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from torch import nn

from lmforge.errors import UserError

FAMILY_MODULES: dict[str, str] = {
    "gpt": "lmforge.models.presets",
    "t5": "lmforge.models.t5",
    "bert": "lmforge.models.bert",
}
"""Family name -> module defining `FAMILY`. The first family is the default."""
DEFAULT_FAMILY = "gpt"


class FamilyConfig:
    """Base of every family's config dataclass: presets, and the `config.json` form naming the family.

    A subclass is a `@dataclass` that sets `family` (a class attribute, not a field).
    """

    family: ClassVar[str]

    @classmethod
    def from_preset(cls, name: str, **overrides):
        """A named preset of this family with some fields replaced."""
        config = get_preset(name, **overrides)
        if not isinstance(config, cls):
            raise UserError(
                f"model preset {name!r} is a {family_of(config).name} model, not {cls.family}"
            )
        return config

    def to_dict(self) -> dict:
        return {"family": self.family, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict):
        """The config of `to_dict()` output; ValueError on keys the dataclass does not have."""
        data = {k: v for k, v in data.items() if k != "family"}
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class Family:
    name: str
    """Key in config.json's `family` field."""
    config_class: type
    """Dataclass with `to_dict()` (including `family`) and `from_dict()`."""
    model_class: type[nn.Module]
    """Built as `model_class(config)`; has `.config`, `num_params()`, `flops_per_token(T)`."""
    presets: dict[str, dict] = field(default_factory=dict)
    """Preset name -> the config fields that differ from the defaults."""
    objectives: tuple[str, ...] = ()
    """Pre-training objectives (train/losses.py) this family trains with; the first is its default."""
    default_preset: str = ""
    """The preset `lmforge pretrain --objective X` starts from when the run names no model."""


def get_family(name: str) -> Family:
    if name not in FAMILY_MODULES:
        raise UserError(
            f"unknown model family {name!r}; choose one of: {', '.join(FAMILY_MODULES)}"
        )
    return importlib.import_module(FAMILY_MODULES[name]).FAMILY


def families() -> list[Family]:
    return [get_family(name) for name in FAMILY_MODULES]


def family_of(config: Any) -> Family:
    """The family of a config object (or of a model, through its `.config`)."""
    config = getattr(config, "config", config)
    for family in families():
        if isinstance(config, family.config_class):
            return family
    raise TypeError(f"{type(config).__name__} belongs to no registered model family")


def family_for_objective(objective: str) -> Family:
    """The family whose default objective is `objective` (mlm -> bert, span -> t5, ...)."""
    for family in families():
        if family.objectives and family.objectives[0] == objective:
            return family
    for family in families():
        if objective in family.objectives:
            return family
    known = sorted({o for f in families() for o in f.objectives})
    raise UserError(f"unknown objective {objective!r}; choose one of: {', '.join(known)}")


def preset_names() -> dict[str, str]:
    """Every preset name -> its family name."""
    return {preset: f.name for f in families() for preset in f.presets}


def get_preset(name: str, **overrides) -> Any:
    """The config of preset `name` (of whichever family has it), with fields replaced."""
    for family in families():
        if name in family.presets:
            try:
                return family.config_class(**{**family.presets[name], **overrides})
            except (TypeError, ValueError) as e:
                raise UserError(f"bad model config: {e}") from None
    raise UserError(f"unknown model preset {name!r}; choose one of: {', '.join(preset_names())}")


def build_model_config(raw: dict) -> Any:
    """A model config from a run file's model section: optional `family` and `preset`, then fields.

    The preset implies the family; naming a family the preset does not belong to is an error.
    Without either, the default family's defaults are used.
    """
    from lmforge import config as configlib

    raw = dict(raw)
    family_name = raw.pop("family", None)
    preset = raw.get("preset")
    if preset is not None:
        owner = preset_names().get(str(preset))
        if owner is None:
            get_preset(str(preset))  # raises the unknown-preset error
        if family_name is not None and family_name != owner:
            raise UserError(f"model preset {preset!r} is a {owner} model, not {family_name}")
        family_name = owner
    family = get_family(family_name or DEFAULT_FAMILY)
    return configlib.build(family.config_class, raw, "model.")


def config_from_dict(data: dict) -> Any:
    """A config from its `to_dict()` form (config.json); ValueError on unknown keys or values."""
    family = get_family(data.get("family", DEFAULT_FAMILY))
    return family.config_class.from_dict(data)


def build_model(config: Any) -> nn.Module:
    return family_of(config).model_class(config)
