"""The sync concern (see the package docstring)."""
