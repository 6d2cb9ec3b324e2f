"""Where bytes live: the Backend protocol and its local-disk and fsspec implementations."""
