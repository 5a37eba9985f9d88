"""dataplane/relay."""
