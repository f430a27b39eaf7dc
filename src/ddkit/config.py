"""Frozen stage dataclasses -> argparse flags, YAML defaults, printing and saving.

A stage config is a frozen dataclass whose field defaults are the paper's, each with a
`metadata={"help": ...}` one-line reason. `add_dataclass_args` turns it into kebab-case
flags; `-c config.yaml` only sets defaults (timm's two-stage parse); the resolved config is
printed and saved next to the outputs. Nothing mutates a config after parsing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Dict, Optional, Type, TypeVar

import yaml

C = TypeVar("C")


def field(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a default and the one-line reason shown in --help."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: default, metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


def _base_type(tp: Any) -> Any:
    """Unwrap Optional[X] -> X so argparse gets a callable."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def add_dataclass_args(parser: argparse.ArgumentParser, cls: Type[Any], prefix: str = "", skip: tuple = ()) -> None:
    """Add one flag per field of dataclass `cls` (field `foo_bar` -> `--foo-bar`)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        tp = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        # argparse %-formats help strings: escape literal percent signs.
        help_ = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")
        dest = prefix + f.name
        if tp is bool:
            group.add_argument(_flag(prefix + f.name), dest=dest, type=_bool, nargs="?", const=True,
                               default=argparse.SUPPRESS, metavar="BOOL", help=help_)
        elif typing.get_origin(tp) in (tuple, list):
            inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
            group.add_argument(_flag(prefix + f.name), dest=dest, default=argparse.SUPPRESS,
                               type=lambda s, t=inner: tuple(t(x) for x in s.split(",") if x),
                               metavar="A,B,..", help=help_)
        else:
            group.add_argument(_flag(prefix + f.name), dest=dest, type=tp, default=argparse.SUPPRESS, help=help_)


def from_args(cls: Type[C], ns: argparse.Namespace | Dict[str, Any], prefix: str = "", base: Optional[Dict[str, Any]] = None) -> C:
    """Build a frozen `cls` from parsed flags over optional YAML defaults `base`."""
    values = dict(base or {})
    src = vars(ns) if isinstance(ns, argparse.Namespace) else ns
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys in config: {', '.join(sorted(unknown))}")
    for n in names:
        if prefix + n in src:
            values[n] = src[prefix + n]
    return cls(**values)


def load_yaml(path: str | Path | None) -> Dict[str, Any]:
    """Read a YAML config file (flat or with a section per stage)."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {p} must hold a mapping")
    return data


def parse_key_values(items: "list[str]", dotted: bool = False) -> Dict[str, Any]:
    """`KEY=VALUE` flags → {key: value}; with `dotted`, `NAME.KEY=VALUE` → {name: {key: value}}.

    Values are YAML scalars (`3`, `0.5`, `true`, `[1, 2]`); dashes in keys become underscores so flags may be
    spelled either way. A malformed item is a DDKitError naming it.
    """
    from ddkit.utils import DDKitError

    out: Dict[str, Any] = {}
    for it in items:
        key, sep, val = it.partition("=")
        if not sep or not key:
            raise DDKitError(f"expected KEY=VALUE, got {it!r}")
        value = yaml.safe_load(val)
        if dotted:
            name, dot, opt = key.partition(".")
            if not dot or not name or not opt:
                raise DDKitError(f"expected NAME.KEY=VALUE (e.g. lic.iterations=50), got {it!r}")
            out.setdefault(name, {})[opt.replace("-", "_")] = value
        else:
            out[key.replace("-", "_")] = value
    return out


def to_dict(cfg: Any) -> Dict[str, Any]:
    """JSON-safe dict of a (possibly nested) dataclass."""
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {k: conv(x) for k, x in dataclasses.asdict(v).items()}
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v
    return conv(cfg)


def dump(cfg: Any, path: Optional[str | Path] = None, title: str = "config") -> str:
    """Print-ready YAML of a config; also written to `path` when given."""
    text = yaml.safe_dump({title: to_dict(cfg)} if title else to_dict(cfg), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text


def config_hash(cfg: Any) -> str:
    import hashlib
    return hashlib.sha1(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:12]
