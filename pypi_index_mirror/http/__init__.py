"""The HTTP concern every client shares: one environment, one retry policy (see the package)."""
