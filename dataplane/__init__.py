"""Glasswing dataplane: the userspace forwarder that relays the connections the mesh redirects."""
