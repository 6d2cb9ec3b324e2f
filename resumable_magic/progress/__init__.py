"""What a run shows its user: the progress model and its text and widget views."""
