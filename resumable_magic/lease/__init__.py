"""Which process executes a run: a lease over the storage backend's lock or compare-and-swap."""
