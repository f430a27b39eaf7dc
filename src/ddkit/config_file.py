"""`-c FILE` for every subcommand: a YAML file of option: value lines (or the config.yaml a run saved)
becomes the chosen subcommand's flag defaults, checked as the flags would check them; `run_record` /
`save_record` write the file that feeds a run back. Nested sub-configs are read as their flat prefixed
keys (`proxy: {epochs: 1}` = `proxy_epochs: 1`, see ddkit.config).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from ddkit.config import YAML_MAX_BYTES, _bool, flat_dict, safe_yaml, to_dict


def load_yaml(path: str | Path | None) -> Dict[str, Any]:
    """Read a YAML config file into a mapping; DDKitError naming the file (and line) when it is not one."""
    from ddkit.utils import DDKitError

    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise DDKitError(f"config file {p} not found")
    if p.stat().st_size > YAML_MAX_BYTES:  # before reading it: a config is a few hundred lines
        raise DDKitError(f"config file {p} is {p.stat().st_size} bytes, more than a config holds "
                         f"({YAML_MAX_BYTES}); give a file of option: value lines")
    try:
        data = safe_yaml(p.read_text(), f"config file {p}")  # size and alias-expansion limits
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise DDKitError(f"config file {p} is not valid YAML{where} ({problem}); fix the file") from None
    except UnicodeDecodeError:
        raise DDKitError(f"config file {p} is not a text file; give a YAML file of option: value lines") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DDKitError(f"config file {p} must hold a mapping of option: value lines, found a "
                         f"{type(data).__name__}")
    return data


# -- `-c FILE` for every subcommand ---------------------------------------------------------------
#: never recorded: the file itself, and --overwrite (so a saved file can never delete anything)
_NOT_RECORDED = ("config", "overwrite")


def _options(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """{canonical key: action} of one (sub)parser; the key is the long flag with underscores, or the positional."""
    out: Dict[str, argparse.Action] = {}
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        longs = [s for s in a.option_strings if s.startswith("--")]
        out[longs[0][2:].replace("-", "_") if longs else a.dest] = a
    return out


def _lookup(options: Dict[str, argparse.Action], key: Any) -> Optional[str]:
    k = str(key).strip().lstrip("-").replace("-", "_")
    if k in options:
        return k
    return next((name for name, a in options.items() if a.dest == k), None)  # the dest spelling also works


def command_parser(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Tuple[Optional[argparse.ArgumentParser], str]:
    """The leaf subparser `argv` selects (e.g. `teacher train`) and its name; (None, '') when there is none."""
    p, names, pos = parser, [], 0
    while True:
        sub = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            return p, " ".join(names)
        tok = next(((i, t) for i, t in enumerate(argv) if i >= pos and not t.startswith("-")), None)
        if tok is None or tok[1] not in sub.choices:
            return None, ""
        p, pos = sub.choices[tok[1]], tok[0] + 1
        names.append(tok[1])


def config_path_from_argv(argv: Sequence[str]) -> Optional[str]:
    """The value of -c/--config in argv (the last one wins, as argparse does), without parsing."""
    found = None
    for i, a in enumerate(argv):
        if a in ("-c", "--config") and i + 1 < len(argv):
            found = argv[i + 1]
        elif a.startswith("--config="):
            found = a.split("=", 1)[1]
    return found


def config_options(path: str | Path, command: str) -> Dict[str, Any]:
    """The option: value mapping of a -c file: flat, or the `args` of a file a ddkit run saved."""
    from ddkit.utils import DDKitError

    data = load_yaml(path)
    if "command" in data and "args" in data:  # a run's saved config.yaml (see run_record)
        if data["command"] != command:
            raise DDKitError(f"{path} records a `ddkit {data['command']}` run; use it with `ddkit {data['command']} "
                             f"-c {path}`, not `ddkit {command}`")
        if not isinstance(data["args"], dict):
            raise DDKitError(f"{path}: 'args' must be a mapping of option: value")
        return dict(data["args"])
    return data


def _convert(a: argparse.Action, key: str, value: Any, where: str) -> Any:
    """A YAML value as the flag would have parsed it; DDKitError (one line) when it cannot be."""
    from ddkit.utils import DDKitError

    def bad(want: str) -> DDKitError:
        return DDKitError(f"{where}: {key}: {value!r} is not {want}")

    if value is None:
        if getattr(a, "ddkit_optional", False) or (a.option_strings and a.default is None):
            return None
        raise bad("allowed to be empty (null)")
    if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(a, argparse._AppendAction):
        return [_convert_one(a, x, bad) for x in (value if isinstance(value, list) else [value])]
    return _convert_one(a, value, bad)


def _convert_one(a: argparse.Action, value: Any, bad: Any) -> Any:
    t = a.type
    if isinstance(value, dict):
        raise bad("a single value")
    if isinstance(value, list):
        if t is not None and not getattr(a, "ddkit_list", False):
            raise bad("a single value")
        value = ",".join(str(x) for x in value)  # the flag's own comma syntax
    try:
        if t is None:
            out: Any = value if isinstance(value, str) else str(value)
        elif t is int:
            if isinstance(value, bool) or isinstance(value, float):
                raise ValueError
            out = int(value)
        elif t is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
        elif t is _bool and isinstance(value, bool):
            out = value
        else:
            out = t(str(value))
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        want = {int: "a whole number", float: "a number", _bool: "true or false"}.get(t, "a valid value")
        raise bad(want) from None
    if a.choices is not None and out not in a.choices:
        raise bad(f"one of {', '.join(map(str, a.choices))}")
    return out


def apply_config_file(parser: argparse.ArgumentParser, command: str, path: str | Path) -> None:
    """Make the options of `path` the defaults of `parser` (flags on the command line still win).

    Every key must be an option of `ddkit COMMAND` (either spelling: `batch_size` or `batch-size`);
    an unknown key fails with the list of valid ones. Values are checked as the flag would check them.
    """
    from ddkit.utils import DDKitError

    options = _options(parser)
    opts: Dict[Any, Any] = {}
    for k, v in config_options(path, command).items():  # a nested mapping (proxy: {epochs: 1}) = its flat keys
        if isinstance(v, dict) and _lookup(options, k) is None:
            opts.update({f"{str(k).replace('-', '_')}_{sk}": sv for sk, sv in v.items()})
        else:
            opts[k] = v
    valid = sorted(k for k in options if k not in ("config",))
    unknown = [str(k) for k in opts if _lookup(options, k) in (None, "config")]
    if unknown:
        raise DDKitError(f"{path}: unknown key(s) {', '.join(unknown)} for `ddkit {command}`; valid keys: "
                         f"{', '.join(valid)}")
    defaults: Dict[str, Any] = {}
    for k, v in opts.items():
        name = _lookup(options, k)
        a = options[name]  # type: ignore[index]
        defaults[a.dest] = _convert(a, name, v, str(path))  # type: ignore[arg-type]
        if a.option_strings:
            a.required = False
        elif a.nargs is None:
            a.nargs = "?"  # a positional the file gives may be left off the command line
    parser.set_defaults(**defaults)


def run_record(ns: argparse.Namespace, *cfgs: Any, drop: Sequence[str] = (), **extra: Any) -> Dict[str, Any]:
    """{"command", "args"}: every option of the run `ns` (parsed by parse_with_config), resolved, as -c reads it.

    Stage dataclasses `cfgs` fill the options left at their defaults; `extra` overrides (e.g. model=arch);
    `drop` names option dests left out (how the work was split, e.g. shard/resume, when the bytes do not
    depend on it, so the file repeats the whole run).
    """
    resolved: Dict[str, Any] = {}
    for c in cfgs:
        resolved.update(flat_dict(c))
    args: Dict[str, Any] = {}
    for name, a in _options(ns._parser).items():
        if a.dest in _NOT_RECORDED or a.dest in drop:
            continue
        if a.dest in resolved:
            args[name] = resolved[a.dest]
        elif hasattr(ns, a.dest):
            args[name] = to_dict(getattr(ns, a.dest))
    args.update(to_dict(extra))
    return {"command": ns._command, "args": args}


def save_record(path: str | Path, ns: argparse.Namespace, *cfgs: Any, drop: Sequence[str] = (),
                facts: Optional[Dict[str, Any]] = None, **extra: Any) -> None:
    """Write a run's config.yaml: its run_record first (what `-c` reads), then `facts` and what the file already
    held (the evaluator's resolved recipe, plan and machine, kept for reading). Under torchrun rank 0 writes."""
    import os

    from ddkit.utils import atomic_write_bytes

    if os.environ.get("RANK", "0") != "0":
        return
    p = Path(path)
    old = yaml.safe_load(p.read_text()) if p.is_file() else None
    keep = {k: v for k, v in old.items() if k not in ("command", "args")} if isinstance(old, dict) else {}
    record = {**run_record(ns, *cfgs, drop=drop, **extra), **to_dict(facts or {}), **keep}
    atomic_write_bytes(p, yaml.safe_dump(record, sort_keys=False).encode())


def parse_with_config(build_parser: Callable[[Sequence[str]], argparse.ArgumentParser], argv: List[str],
                      method_from_argv: Callable[[Sequence[str]], Optional[str]]) -> argparse.Namespace:
    """Parse argv; with -c FILE its options become the chosen subcommand's defaults (flags still win).

    Every subcommand gets -c. The namespace carries `_parser` (the subcommand's) and `_command` for run_record.
    """
    path = config_path_from_argv(argv)
    build_argv = argv
    if path and argv[:1] == ["distill"] and method_from_argv(argv) is None:
        # The method decides which options exist, so the file's `method:` picks the option set.
        m = config_options(path, "distill").get("method")
        build_argv = argv + ["--method", str(m)] if m else argv
    parser = build_parser(build_argv)
    leaf, command = command_parser(parser, argv)
    if leaf is not None:
        if not any(a.dest == "config" for a in leaf._actions):
            leaf.add_argument("-c", "--config", default=None, help="YAML file whose keys set flag defaults")
        if path:
            apply_config_file(leaf, command, path)
    args = parser.parse_args(argv)
    args._parser, args._command = leaf, command
    return args
