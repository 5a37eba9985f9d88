"""The `glasswing` command: parses, calls dataplane.node.control, prints."""
