"""The `glasswing` command: parses, calls dataplane.control, prints."""
