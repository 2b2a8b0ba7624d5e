"""srwatch: a watch-folder super-resolution daemon."""

__version__ = "0.1.0"
