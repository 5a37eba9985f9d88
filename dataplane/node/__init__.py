"""dataplane/node."""
