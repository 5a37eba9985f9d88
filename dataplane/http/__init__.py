"""dataplane/http."""
