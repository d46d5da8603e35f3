"""Flax building blocks (being written)."""

__all__: list[str] = []
