"""dataplane/tunnel."""
