"""The rstuf concern (see the package docstring)."""
