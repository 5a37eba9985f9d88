"""dataplane/policy/lb."""
