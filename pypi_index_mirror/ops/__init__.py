"""The ops concern (see the package docstring)."""
