"""The HTTP concern shared by every client: one environment, one retry policy (see the package docstring)."""
