"""The upstream concern (see the package docstring)."""
