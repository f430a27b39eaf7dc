"""ddkit: dataset distillation toolkit (condense, relabel, evaluate honestly)."""
__version__ = "0.1.0"
