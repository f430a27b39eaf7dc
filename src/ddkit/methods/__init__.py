"""Condensation methods: `create_method(name, **cfg)`, `list_methods()`, `register_method`."""
from ddkit.methods.base import (METHODS, Method, MethodConfig, check_ipc, create_method, list_methods, method_spec,
                                per_class, register_method)

__all__ = ["METHODS", "Method", "MethodConfig", "check_ipc", "create_method", "list_methods", "method_spec",
           "per_class", "register_method"]
