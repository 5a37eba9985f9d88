"""dataplane/host."""
