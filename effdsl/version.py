"""The version of effdsl, in one place: pyproject.toml reads it, and every module imports it
from here (not from the package's `__init__`, so lower modules never import the public face)."""

__version__ = "0.1.0"
