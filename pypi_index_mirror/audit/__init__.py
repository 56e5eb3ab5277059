"""The audit concern (see the package docstring)."""
