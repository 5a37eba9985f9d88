"""lab/bench."""
