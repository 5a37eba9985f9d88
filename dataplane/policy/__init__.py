"""dataplane/policy."""
