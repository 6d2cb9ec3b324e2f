"""Values to bytes and back, and fingerprints of values: nothing about files."""
