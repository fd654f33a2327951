__version__ = "0.1.0"
"""The version of forksafe, as in its package metadata."""
