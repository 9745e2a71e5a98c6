"""The rulebook and the asset checks built from it."""
