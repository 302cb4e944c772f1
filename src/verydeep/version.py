"""verydeep's version: its one home (pyproject.toml reads it)."""
__version__ = "0.2.0"
