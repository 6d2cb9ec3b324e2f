"""What a run, or a sharded map, shows its user: the progress models and their text and widget views."""
