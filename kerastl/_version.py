"""The package version, importable from every layer without importing ``kerastl``."""

__version__ = "0.1.0"
