"""A self-hosted sentence-embedding service."""

__version__ = "0.1.0"
