"""The package version (one place; read by the saved-model format and the CLI)."""

__version__ = "0.1.0"
