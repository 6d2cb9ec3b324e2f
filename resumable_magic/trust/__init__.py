"""Whose checkpoints are loaded: the signing key, signatures and their verification."""
