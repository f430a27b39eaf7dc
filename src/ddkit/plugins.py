"""Plugins: a user's datasets, models and methods, registered from a file, a module or a pip package.

    # my_plugin.py — `ddkit --plugin my_plugin.py methods` lists what it registers
    from ddkit.plugins import register_dataset, register_method, register_model

A plugin is ordinary Python that calls the public `register_*` functions when imported. It reaches
ddkit three ways: `--plugin path/to/file.py` or `--plugin package.module` on the command line
(repeatable, loaded before the command parses its flags, so `--method mine --help` shows the
plugin method's options), or an installed distribution's entry point in the `ddkit.plugins` group
(the packaging convention, read with importlib.metadata), e.g. in its pyproject.toml:

    [project.entry-points."ddkit.plugins"]
    mything = "mything.ddkit_plugin"          # a module (imported) or "pkg.mod:setup" (called)

This module stays free of torch until a `register_*` is called, so the CLI can load it at startup.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List

ENTRY_POINT_GROUP = "ddkit.plugins"

_LOADED: List[str] = []  # what was loaded, in order (for messages and the list commands)


def register_dataset(name: str, **kw: Any) -> Callable:
    """Decorator registering a dataset loader; see `ddkit.data.custom.register_dataset`."""
    from ddkit.data.custom import register_dataset as reg

    return reg(name, **kw)


def register_model(name: str, aliases: tuple = ()) -> Callable:
    """Decorator registering a model builder `f(num_classes, image_size, channels, **kw) -> nn.Module`."""
    from ddkit.models.factory import register_model as reg

    return reg(name, aliases=aliases)


def register_method(name: str, **kw: Any) -> Callable:
    """Decorator registering a condensation method; see `ddkit.methods.base.register_method`."""
    from ddkit.methods.base import _load_builtin, register_method as reg

    _load_builtin()  # built-ins first, so a plugin reusing a built-in name fails at once, not later
    return reg(name, **kw)


def _user_error(msg: str) -> Exception:
    from ddkit.utils import DDKitError

    return DDKitError(msg)


def load_plugin(spec: str) -> str:
    """Import a plugin given as a file path (`x.py`) or a dotted module name; returns what was loaded."""
    path = Path(spec).expanduser()
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise _user_error(f"plugin file {spec!r} not found")
        # A name unique per file, so two plugins both called plugin.py do not replace each other.
        key = "ddkit_plugin_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        if key not in sys.modules:
            mod_spec = importlib.util.spec_from_file_location(key, path)
            if mod_spec is None or mod_spec.loader is None:
                raise _user_error(f"cannot import plugin file {spec!r}")
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[key] = module
            try:
                with _one_line_failure(f"plugin file {spec}"):
                    mod_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[key]
                raise
    else:
        try:
            with _one_line_failure(f"plugin {spec}"):
                importlib.import_module(spec)
        except ModuleNotFoundError as e:  # only the module itself missing, not something it imports
            if e.name and spec.startswith(e.name):
                raise _user_error(f"plugin {spec!r}: no such file or module") from None
            raise _user_error(f"plugin {spec}: it imports {e.name!r}, which is not installed") from None
    _LOADED.append(spec)
    return spec


@contextlib.contextmanager
def _one_line_failure(what: str) -> Iterator[None]:
    """Whatever importing a plugin raises becomes one line naming the plugin (#25): a syntax error, a missing
    dependency, an exception, a name that is already registered, or a `sys.exit()` at import (which would
    otherwise end the command with that code having done nothing). Ctrl-C stays Ctrl-C."""
    try:
        yield
    except KeyboardInterrupt:
        raise
    except ModuleNotFoundError as e:
        if what.startswith("plugin file") or not e.name:
            raise _user_error(f"{what}: it imports {e.name or 'a module'!r}, which is not installed") from None
        raise  # load_plugin tells "no such module" from a missing dependency
    except SyntaxError as e:
        raise _user_error(f"{what}: syntax error at line {e.lineno}: {e.msg}") from None
    except SystemExit as e:
        raise _user_error(f"{what} called sys.exit({e.code!r}) while being imported; a plugin only registers "
                          f"names, the command did not run") from None
    except Exception as e:  # noqa: BLE001 - any failure of the user's code is theirs to fix
        msg = " ".join(str(e).split())[:160]
        raise _user_error(f"{what} failed to import: {type(e).__name__}: {msg}") from None


def entry_points() -> list:
    """The installed `ddkit.plugins` entry points (no import of what they name)."""
    from importlib.metadata import entry_points as eps

    return list(eps(group=ENTRY_POINT_GROUP))


def load_entry_points() -> List[str]:
    """Load every installed `ddkit.plugins` entry point; a callable target is called with no arguments."""
    done = []
    for ep in entry_points():
        tag = f"{ep.name} = {ep.value}"
        if tag in _LOADED:
            continue
        with _one_line_failure(f"plugin entry point {tag}"):
            obj = ep.load()
            if callable(obj) and ":" in ep.value:
                obj()
        _LOADED.append(tag)
        done.append(tag)
    return done


def forget_loaded() -> None:
    """Forget what was loaded (file plugins can then be imported afresh); registrations stay until
    their registries' `unregister` removes them."""
    _LOADED.clear()
    for key in [k for k in sys.modules if k.startswith("ddkit_plugin_")]:
        del sys.modules[key]


def loaded_plugins() -> List[str]:
    """The plugins loaded in this process, in order."""
    return list(_LOADED)


def split_plugin_args(argv: List[str]) -> tuple:
    """(argv without `--plugin X` / `--plugin=X`, the X's): the flag may stand anywhere on the line."""
    rest: List[str] = []
    found: List[str] = []
    it = iter(argv)
    for a in it:
        if a == "--plugin":
            val = next(it, None)
            if val is None:
                raise _user_error("--plugin needs a file path or module name")
            found.append(val)
        elif a.startswith("--plugin="):
            found.append(a.split("=", 1)[1])
        else:
            rest.append(a)
    return rest, found
