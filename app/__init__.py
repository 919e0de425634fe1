"""facerec: a face recognition web service (see README.md)."""

# The release, as pyproject.toml's [project] version says (tests/test_cli.py checks both).
__version__ = "0.1.0"
