"""The proxy concern (see the package docstring)."""
