"""The mirror concern (see the package docstring)."""
