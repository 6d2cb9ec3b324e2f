"""Resumable maps and sweeps on Dask: one resumable run per shard or parameter set."""
