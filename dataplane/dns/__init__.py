"""dataplane/dns."""
