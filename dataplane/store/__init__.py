"""dataplane/store."""
