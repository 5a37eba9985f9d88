"""dataplane/kernel."""
