"""Reading configuration sources: files, directories of them and stdin, as YAML streams or
JSON, into (file, document number, parsed document) before any validation.

YAML is read with YAML 1.2 scalars: only true/false are booleans (so `on:` in a retry policy
stays a key and `yes` stays a string) and dates stay strings. Duplicate keys are refused, in
YAML and JSON. Problems raise problems.ConfigError."""
import json
import os
import re
import sys

import yaml

from dataplane.store.problems import ConfigError

STDIN_NAME = "<stdin>"  # how documents read from `-f -` are named in errors
EXTENSIONS = (".yaml", ".yml", ".json")

_BOOL = "tag:yaml.org,2002:bool"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans, no timestamps, and duplicate keys refused."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE or not isinstance(key_node, yaml.ScalarNode):
                    continue
                if (key_node.tag, key_node.value) in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add((key_node.tag, key_node.value))
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _TIMESTAMP)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _parse_yaml(file, text):
    """(index, data) for every non-empty document of a YAML stream, index counting all."""
    loader = _Loader(text)
    index = 0
    try:
        while True:
            index += 1
            if not loader.check_data():
                return
            data = loader.get_data()
            if data is not None:
                yield index, data
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"invalid YAML: {where}{e.problem or e.context}", file=file, index=index) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", file=file, index=index) from None
    finally:
        loader.dispose()


def _parse_json(file, text):
    """A JSON object is one document; a JSON array holds one document per element."""
    if not text.strip():
        return []
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise ConfigError(f"invalid JSON: line {e.lineno} column {e.colno}: {e.msg}", file=file) from None
    except _DuplicateKey as e:
        raise ConfigError(f"invalid JSON: duplicate key {e.args[0]!r}", file=file) from None
    if isinstance(data, list):
        return [(i, d) for i, d in enumerate(data, 1) if d is not None]
    return [(1, data)]


def _read(path) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError("no such file or directory", file=path) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=path) from None
    except OSError as e:
        raise ConfigError(e.strerror or str(e), file=path) from None


def _parse(file, text, as_json):
    return _parse_json(file, text) if as_json else _parse_yaml(file, text)


def raw_documents(source, stdin):
    """(file, index, parsed document) for every non-empty document of one source."""
    if source == "-":
        stream = sys.stdin if stdin is None else stdin
        text = stream if isinstance(stream, (str, bytes)) else stream.read()
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigError("not UTF-8 text", file=STDIN_NAME) from None
        # JSON (as printed by `get -o json`) when it starts like JSON, YAML otherwise.
        for index, data in _parse(STDIN_NAME, text, text.lstrip().startswith(("{", "["))):
            yield STDIN_NAME, index, data
    elif os.path.isdir(source):
        try:
            entries = sorted(os.listdir(source))
        except OSError as e:
            raise ConfigError(e.strerror or str(e), file=source) from None
        for entry in entries:
            path = os.path.join(source, entry)
            if entry.startswith(".") or not entry.lower().endswith(EXTENSIONS) or not os.path.isfile(path):
                continue
            for index, data in _parse(path, _read(path), entry.lower().endswith(".json")):
                yield path, index, data
    else:
        for index, data in _parse(source, _read(source), source.lower().endswith(".json")):
            yield source, index, data
