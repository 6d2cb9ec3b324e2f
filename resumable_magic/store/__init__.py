"""The on-disk format of checkpoints, and the only code that reads or writes it."""
