"""Open a store by URL: "file:///DIR" or a plain directory path is the
embedded file backend, "etcd://HOST:PORT" is etcd v3 (its HTTP gateway)."""
import urllib.parse

from dataplane.errors import GlasswingError
from dataplane.store.kv_etcd import EtcdKV
from dataplane.store.kv_file import FileKV

USAGE = "want file:///DIR, a directory path, or etcd://HOST:PORT"


def open_kv(url: str):
    if not isinstance(url, str) or not url.strip():
        raise GlasswingError(f"store URL {url!r} is empty: {USAGE}")
    if "://" not in url:
        return FileKV(url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        path = urllib.parse.unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path or parts.query or parts.fragment:
            raise GlasswingError(f"store URL {url!r} is not a local directory: {USAGE}")
        return FileKV(path)
    if parts.scheme == "etcd":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or not port or parts.path not in ("", "/") or parts.query \
                or parts.fragment or parts.username or parts.password:
            raise GlasswingError(f"store URL {url!r} is not etcd://HOST:PORT")
        return EtcdKV(f"http://{parts.netloc}")
    raise GlasswingError(f"unsupported store URL {url!r}: {USAGE}")
