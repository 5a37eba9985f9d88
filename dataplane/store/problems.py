"""Problems in configuration documents, and how their places and values are described.

ConfigError is what users see: one line, `FILE: document N: FIELD.PATH: REASON`. Invalid is raised
while a document is checked, before its file and number are known; schema.validate turns it into a
ConfigError. sub/short/describe build the paths and value descriptions of those messages."""
import json
import re

from dataplane.errors import GlasswingError

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class ConfigError(GlasswingError):
    """An invalid configuration document or source: `FILE: document N: FIELD.PATH: REASON`.

    file, index (1-based document number within file), path (dotted field path) and reason are
    kept as attributes; any of the first three may be None when they do not apply."""

    def __init__(self, reason: str, file: str = None, index: int = None, path: str = None):
        self.file, self.index, self.path, self.reason = file, index, path, reason
        parts = [str(file)] if file is not None else []
        if index is not None:
            parts.append(f"document {index}")
        if path:
            parts.append(path)
        parts.append(reason)
        super().__init__(": ".join(parts))


class Invalid(Exception):
    """A problem at a field path, before the file and document number are known."""

    def __init__(self, path, reason):
        super().__init__(reason)
        self.path, self.reason = path, reason


def sub(path, key) -> str:
    key = str(key)
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path or ''}[{json.dumps(key)}]"


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {short(value)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {short(value)}"


def unknown_field(path, key, known) -> Invalid:
    squashed = key.replace("_", "").replace("-", "").lower()
    hint = next((k for k in known if k.lower() == squashed), None)
    if hint:
        return Invalid(path, f"unknown field (did you mean {hint}?)")
    return Invalid(path, f"unknown field (expected one of {', '.join(known)})")
