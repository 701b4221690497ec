"""Settings defined once: a dataclass field carries its default, type, help, flag spelling and check.

From that one declaration come the TOML key (the field's name; ``-`` accepted for ``_``), the ``ZC_NAME``
environment variable, the ``--name`` flag and its ``--help`` line, coercion and per-value validation. Layers
merge as defaults < TOML file < ``ZC_*`` environment < command-line flags; a bad value raises ConfigError naming
the key and the layer it came from. Checks that tie several settings together stay in each class's ``validate``.

Declare a setting as ``max_attempts: int = setting(5, "attempts per job before it fails", check=at_least(1))``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, get_type_hints

from zcrepl.core.errors import ConfigError, InvalidPath
from zcrepl.core.exportpolicy import table_specs
from zcrepl.core.paths import canonical_abs

Check = Callable[[str, Any], None]  # (key, value) -> None, or raise ConfigError
_META = "zcrepl.setting"


@dataclass(frozen=True)
class Setting:
    """What a field needs beyond its type and default to be read from every layer and explained."""

    help: str
    metavar: str | None = None
    flag: str = ""  # the flag's name when not the field's (repeatable lists take the singular: --export)
    choices: tuple[str, ...] = ()
    group: str = ""  # the --help section; "" = the general one
    check: Check | None = None
    default_text: str | None = None  # what --help calls the default when the field's value is not it ("" = none)


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            metavar: str | None = None, flag: str = "", choices: Iterable[str] = (), group: str = "",
            check: Check | None = None, default_text: str | None = None) -> Any:
    """A dataclass field that is a setting (see the module docstring)."""
    meta = {_META: Setting(help, metavar, flag, tuple(choices), group, check, default_text)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def default_of(cls: type[Any], name: str) -> Any:
    """The default ``cls`` (a settings class) declares for setting ``name``.

    For the value objects built from a config (``SessionLimits.from_config``): where they still have a default,
    for tests and tools that build them without a config, it is this, so the setting's default is written once.
    """
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            if f.default is dataclasses.MISSING:
                raise KeyError(f"{cls.__name__}.{name} has no default")
            return f.default
    raise KeyError(f"{cls.__name__} has no setting {name!r}")


def spec_of(f: dataclasses.Field[Any]) -> Setting:
    """The field's declaration; a plain field (no ``setting``) is still a setting, with no help text."""
    spec = f.metadata.get(_META)
    return spec if isinstance(spec, Setting) else Setting("")


# -- checks ---------------------------------------------------------------------------------------
def positive(unit: str = "number") -> Check:
    def check(key: str, value: Any) -> None:
        if not value > 0:
            raise ConfigError(f"{key} must be a positive {unit}")
    return check


def at_least(low: int, unit: str = "", why: str = "") -> Check:
    def check(key: str, value: Any) -> None:
        if value < low:
            raise ConfigError(f"{key} must be at least {low}{unit}{why}")
    return check


def within(low: float, high: float, words: str) -> Check:
    """``low <= value <= high``; ``words`` says the range as a person would (``"60 seconds to 7 days"``)."""
    def check(key: str, value: Any) -> None:
        if not low <= value <= high:
            raise ConfigError(f"{key} {value:g}: choose {words}")
    return check


def check_fields(obj: Any) -> None:
    """Run every field's own check and choices; a class's ``validate`` calls this before its cross-checks."""
    for f in dataclasses.fields(obj):
        spec, value = spec_of(f), getattr(obj, f.name)
        if spec.choices and value not in spec.choices:
            raise ConfigError(f"{f.name} {value!r}: choose {_either(spec.choices)}")
        if spec.check is not None:
            spec.check(f.name, value)


def _either(words: tuple[str, ...]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


# -- reading the layers ---------------------------------------------------------------------------
class SettingsClass(Protocol):
    def validate(self) -> None: ...

    @staticmethod
    def resolve_defaults(values: dict[str, Any]) -> dict[str, Any]: ...


C = TypeVar("C", bound=SettingsClass)


def env_name(key: str) -> str:
    return f"ZC_{key.upper()}"


def flag_name(f: dataclasses.Field[Any]) -> str:
    return "--" + (spec_of(f).flag or f.name.replace("_", "-"))


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _int(value: Any) -> int:
    if isinstance(value, bool | float):
        raise ValueError(value)
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    f = float(value)
    if not math.isfinite(f):
        raise ValueError(value)
    return f


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(value)
    return value


def _strs(value: Any) -> tuple[str, ...]:
    if isinstance(value, dict):  # a TOML table of tables: [export_policy."/srv/x"]
        value = table_specs(value)
    items = value.replace(";", " ").split() if isinstance(value, str) else list(value)
    if not all(isinstance(v, str) for v in items):
        raise ValueError(value)
    return tuple(items)


def _paths(value: Any) -> tuple[bytes, ...]:
    items = value.split(os.pathsep) if isinstance(value, str) else list(value)
    return tuple(canonical_abs(os.fsencode(os.path.abspath(v))) for v in items if v)


# How a value read from TOML (typed) or from the environment and flags (strings) becomes each field type.
_COERCE: list[tuple[Any, Callable[[Any], Any]]] = [
    (bool, _bool), (int, _int), (float, _float), (str, _str), (tuple[str, ...], _strs), (tuple[bytes, ...], _paths),
]


def coerce(name: str, typ: Any, value: Any, source: str) -> Any:
    """``value`` as read from ``source`` (TOML keeps its types; environment and flags give strings)."""
    convert = next((fn for t, fn in _COERCE if typ is t or typ == t), None)
    if convert is None:
        raise ConfigError(f"{name}: unsupported type {typ}")
    try:
        return convert(value)
    except InvalidPath as err:
        raise ConfigError(f"{name} from {source}: {err}") from err
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} from {source}: {value!r} is not a valid {getattr(typ, '__name__', typ)}") from err


def load_config(
    cls: type[C],
    toml_path: str | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> C:
    """Merge the four layers into a validated ``cls``. ``flags`` holds only what was given."""
    hints = get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    if toml_path:
        try:
            doc = tomllib.loads(Path(toml_path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"config file {toml_path}: {err}") from err
        for key, value in doc.items():
            attr = key.replace("-", "_")
            if attr not in by_name:
                raise ConfigError(f"config file {toml_path}: unknown key {key!r} (known: {', '.join(sorted(by_name))})")
            values[attr] = coerce(key, hints[attr], value, toml_path)
    env = os.environ if environ is None else environ
    for attr in by_name:
        raw = env.get(env_name(attr))
        if raw is not None and raw != "":
            values[attr] = coerce(attr, hints[attr], raw, env_name(attr))
    for attr, value in (flags or {}).items():
        if value is None:
            continue
        if attr not in by_name:
            raise ConfigError(f"unknown setting {attr!r}")
        values[attr] = coerce(attr, hints[attr], value, flag_name(by_name[attr]))
    cfg = cls(**cls.resolve_defaults(values))
    cfg.validate()
    return cfg


# -- the command line -----------------------------------------------------------------------------
LAYERS = ("Every setting is also a key of the --config TOML file (the flag's name with '_' for '-', or the key "
          "named in its help) and a ZC_KEY environment variable (the key in capitals); lists are TOML arrays, or "
          "values separated by spaces or ';' in a variable. Flags win over the environment, which wins over the "
          "file.")


def build_parser(cls: type[Any], prog: str, description: str | None) -> argparse.ArgumentParser:
    """``--config`` and one flag per field of ``cls``, grouped and explained as the fields declare."""
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=LAYERS)
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with the settings below as keys")
    hints = get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        spec = spec_of(f)
        if spec.group and spec.group not in groups:
            groups[spec.group] = p.add_argument_group(spec.group)
        where: Any = groups[spec.group] if spec.group else p
        kw: dict[str, Any] = {"dest": f.name, "help": _help(f, spec, hints[f.name])}
        typ = hints[f.name]
        if typ is bool:
            kw.update(action="store_true", default=None)
        else:
            if typ in (tuple[str, ...], tuple[bytes, ...]):
                kw["action"] = "append"
            if spec.choices:
                kw["choices"] = spec.choices
            else:
                kw["metavar"] = spec.metavar or _metavar(typ)
        where.add_argument(flag_name(f), **kw)
    return p


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The flags of a parsed command line that were given, as ``load_config`` takes them."""
    return {k: v for k, v in vars(args).items() if k != "config" and v is not None}


def _metavar(typ: Any) -> str:
    return {int: "N", float: "NUMBER"}.get(typ, "VALUE")


def _help(f: dataclasses.Field[Any], spec: Setting, typ: Any) -> str:
    text = spec.help
    default = spec.default_text
    if default is None:
        value = f.default if f.default is not dataclasses.MISSING else None
        default = "" if value in (None, "", (), False) else (f"{value:g}" if typ is float else str(value))
    if default:
        text += f" (default {default})"
    if typ in (tuple[str, ...], tuple[bytes, ...]):
        text += "; repeatable"
    if spec.flag:
        text += f"; key {f.name}"
    return text.replace("%", "%%")  # argparse formats help with %
