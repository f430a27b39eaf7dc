"""Frozen stage dataclasses -> argparse flags, YAML defaults, printing and saving.

A stage config is a frozen dataclass whose field defaults are the paper's, each with a
`metadata={"help": ...}` one-line reason. `add_dataclass_args` turns it into kebab-case
flags; `-c config.yaml` only sets defaults (timm's two-stage parse, see ddkit.config_file); the resolved config is
printed and saved next to the outputs. Nothing mutates a config after parsing.

A field whose type is itself a config dataclass (e.g. a coreset's `proxy: DynamicsConfig`) is a nested
sub-config: it is flattened to prefixed flags (`proxy.epochs` -> `--proxy-epochs`, key `proxy_epochs`),
optionally only for the sub-fields its metadata lists (`field(..., only=(...))`); `build` accepts the
flat prefixed keys, a nested mapping or an instance, and `flat_dict` gives the flat keys back (what a
saved config.yaml holds).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type, TypeVar

import yaml

C = TypeVar("C")


# -- YAML with limits (#25): a config is a few hundred option lines, never a "billion laughs" ------------------
#: largest config file read (bytes), and most nodes its aliases may expand to
YAML_MAX_BYTES = 1 << 20
YAML_MAX_NODES = 20_000


class _LimitedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a document whose aliases expand beyond YAML_MAX_NODES nodes (the
    "billion laughs": nine aliases per level give 9^k values from a few lines), before anything is built."""

    def compose_document(self) -> Any:  # noqa: D102 - pyyaml's hook
        node = super().compose_document()
        _check_expansion(node)
        return node


class YamlTooLarge(ValueError):
    """A YAML document that expands beyond YAML_MAX_NODES nodes."""


def _check_expansion(root: Any) -> None:
    """Count the nodes `root` expands to, each alias counted at full size (memoised per node)."""
    size: Dict[int, int] = {}
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in size:
            continue
        kids = ([k for pair in node.value for k in pair] if isinstance(node, yaml.MappingNode) else
                list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if not done:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in size)
            continue
        total = 1 + sum(size.get(id(k), 0) for k in kids)
        if total > YAML_MAX_NODES:
            raise YamlTooLarge(f"its aliases expand to more than {YAML_MAX_NODES} values")
        size[id(node)] = total


def safe_yaml(text: str, where: str) -> Any:
    """YAML text → plain values (safe_load) with size and alias-expansion limits; DDKitError naming `where`."""
    from ddkit.utils import DDKitError

    if len(text) > YAML_MAX_BYTES:
        raise DDKitError(f"{where} is {len(text)} characters, more than a config holds ({YAML_MAX_BYTES}); "
                         f"give a file of option: value lines")
    try:
        return yaml.load(text, Loader=_LimitedLoader)  # noqa: S506 - a SafeLoader subclass
    except YamlTooLarge as e:
        raise DDKitError(f"{where}: {e}; a config needs no alias expansion at that scale") from None
    except RecursionError:
        raise DDKitError(f"{where} nests too deeply to be a config") from None


def field(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a default and the one-line reason shown in --help."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: default, metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), like every other ddkit error; exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"ddkit: error: {self.prog}: {message}; see `{self.prog} --help`\n")


def _nested_type(f: dataclasses.Field, hints: Dict[str, Any]) -> Optional[type]:
    """The sub-config class of a nested field, else None."""
    tp = hints[f.name]
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def flat_fields(cls: Type[Any]) -> List[Tuple[str, dataclasses.Field, Any, Any]]:
    """(flat name, field, type hint, default) of every option of `cls`, nested sub-configs flattened
    (`proxy.epochs` -> `proxy_epochs`, with the sub-field's help and the nested default's value)."""
    hints = typing.get_type_hints(cls)
    out: List[Tuple[str, dataclasses.Field, Any, Any]] = []
    for f in dataclasses.fields(cls):
        sub = _nested_type(f, hints)
        if sub is None:
            out.append((f.name, f, hints[f.name], _default(f)))
            continue
        inner, only = typing.get_type_hints(sub), f.metadata.get("only")
        base = _default(f)
        for g in dataclasses.fields(sub):
            if only is None or g.name in only:
                out.append((f"{f.name}_{g.name}", g, inner[g.name], getattr(base, g.name)))
    return out


def option_names(cls: Type[Any]) -> List[str]:
    """Every key `build(cls, …)` accepts: the flat option names and the nested fields' own names."""
    return sorted({n for n, *_ in flat_fields(cls)} | {f.name for f in dataclasses.fields(cls)})


def _subs(cls: Type[Any]) -> Dict[str, Tuple[str, str]]:
    """{flat name: (nested field, sub-field)} of the flattened options of `cls`."""
    hints = typing.get_type_hints(cls)
    out: Dict[str, Tuple[str, str]] = {}
    for f in dataclasses.fields(cls):
        sub, only = _nested_type(f, hints), f.metadata.get("only")
        for g in dataclasses.fields(sub) if sub is not None else ():
            if only is None or g.name in only:
                out[f"{f.name}_{g.name}"] = (f.name, g.name)
    return out


def build(cls: Type[C], values: Dict[str, Any]) -> C:
    """`cls(**values)` where a nested sub-config may be given as flat prefixed keys (`proxy_epochs=1`), a
    mapping (`proxy={"epochs": 1}`) or an instance; the flat keys apply over the nested default.
    Unknown keys raise ValueError naming them."""
    unknown = sorted(set(values) - set(option_names(cls)))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
    subs, hints = _subs(cls), typing.get_type_hints(cls)
    kw = {k: v for k, v in values.items() if k not in subs}
    for f in dataclasses.fields(cls):
        sub = _nested_type(f, hints)
        if sub is None:
            continue
        flat = {subs[k][1]: v for k, v in values.items() if k in subs and subs[k][0] == f.name}
        given = kw.get(f.name)
        if isinstance(given, dict):
            given = sub(**given)
        if flat or given is not None:
            kw[f.name] = dataclasses.replace(given if given is not None else _default(f), **flat)
    return cls(**kw)


def flat_dict(cfg: Any) -> Dict[str, Any]:
    """to_dict(cfg) with each nested sub-config spelled as its flat prefixed keys (the flags' own names)."""
    subs = _subs(type(cfg))
    nested = {parent for parent, _ in subs.values()}
    out = {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in nested}
    out.update({k: to_dict(getattr(getattr(cfg, parent), name)) for k, (parent, name) in subs.items()})
    return out


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
    group = parser.add_argument_group(cls.__name__)
    for name, f, hint, default in flat_fields(cls):
        if name in skip or f.metadata.get("cli") is False:
            continue
        tp = _base_type(hint)
        # argparse %-formats help strings: escape literal percent signs.
        help_ = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")
        dest = prefix + name
        if tp is bool:
            act = group.add_argument(_flag(dest), dest=dest, type=_bool, nargs="?", const=True,
                                     default=argparse.SUPPRESS, metavar="BOOL", help=help_)
        elif typing.get_origin(tp) in (tuple, list):
            inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
            act = group.add_argument(_flag(dest), dest=dest, default=argparse.SUPPRESS,
                                     type=lambda s, t=inner: tuple(t(x) for x in s.split(",") if x),
                                     metavar="A,B,..", help=help_)
        else:
            act = group.add_argument(_flag(dest), dest=dest, type=tp, default=argparse.SUPPRESS, help=help_)
        # What `-c FILE` needs to check a YAML value the way the flag would: may it be null, is it a list.
        act.ddkit_optional = type(None) in typing.get_args(hint)  # type: ignore[attr-defined]
        act.ddkit_list = typing.get_origin(tp) in (tuple, list)  # type: ignore[attr-defined]


def from_args(cls: Type[C], ns: argparse.Namespace | Dict[str, Any], prefix: str = "", base: Optional[Dict[str, Any]] = None) -> C:
    """Build a frozen `cls` from parsed flags over optional YAML defaults `base`."""
    values = dict(base or {})
    src = vars(ns) if isinstance(ns, argparse.Namespace) else ns
    for n in option_names(cls):
        if prefix + n in src:
            values[n] = src[prefix + n]
    return build(cls, values)


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
        value = safe_yaml(val, f"option {key}")
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
