"""One resumable run of a loop: split the cell, restore, iterate, decide and take checkpoints."""
