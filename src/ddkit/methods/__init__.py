"""Condensation methods: `create_method(name, **cfg)`, `list_methods()`, `register_method`, `ClassResult`."""
from ddkit.methods.base import (METHODS, ClassResult, Method, MethodConfig, assemble, check_ipc, create_method,
                                list_methods, method_spec, register_method)

__all__ = ["METHODS", "ClassResult", "Method", "MethodConfig", "assemble", "check_ipc", "create_method",
           "list_methods", "method_spec", "register_method"]
