"""Pass 2 of checking a document: the rules that span fields (required fields, mutual
exclusion, sums, cross-field limits), and the defaults, on the checked copy pass 1 (shape.py)
made. One check_KIND(spec, path) per kind, changing spec in place; each raises problems.Invalid
for the first problem. kinds.py names the check of each kind."""
import ipaddress
import re

from dataplane.errors import GlasswingError
from dataplane.settings import POD_RANGE
from dataplane.store import names, vips
from dataplane.store.problems import Invalid, short, sub
from dataplane.store.shape import RETRY_CONDITIONS

_LABEL_RULE = ("use at most 63 letters, digits, '-', '_', '.' and '/', "
               "starting and ending with a letter or digit")
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_HOST = re.compile(rf"(?:\*\.)?{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_STATUS_CODE = re.compile(r"[1-5][0-9][0-9]")


def call(path, check, *args):
    """Run a dataplane.store.names check, moving its one-line complaint to `path`."""
    try:
        return check(*args)
    except GlasswingError as e:
        raise Invalid(path, str(e)) from None


def require(d, key, path):
    if key not in d:
        raise Invalid(sub(path, key), "required")
    return d[key]


def labels(given, path):
    for key, value in given.items():
        try:
            names.labels([f"{key}="])
        except GlasswingError:
            raise Invalid(path, f"invalid label key {short(key)}: {_LABEL_RULE}") from None
        if value:
            try:
                names.labels([f"k={value}"])
            except GlasswingError:
                raise Invalid(sub(path, key), f"invalid label value {short(value)}: {_LABEL_RULE}") from None


def _headers(headers, path):
    for key, value in headers.items():
        if not _HEADER_NAME.fullmatch(key):
            raise Invalid(path, f"invalid header name {short(key)}")
        if any(c in value for c in "\r\n\0"):
            raise Invalid(sub(path, key), "header values must not contain line breaks or NUL")


def _http_path(d, key, path):
    if key in d and not d[key].startswith("/"):
        raise Invalid(sub(path, key), f"must start with '/', got {short(d[key])}")


def check_service(spec, path):
    fams = spec.setdefault("ipFamilies", list(vips.DUAL))
    if not fams:
        raise Invalid(sub(path, "ipFamilies"), "at least one of IPv4, IPv6 is required (omit it for both)")
    if len(set(fams)) != len(fams):
        raise Invalid(sub(path, "ipFamilies"), f"a family is given twice in {', '.join(fams)}")
    spec["ipFamilies"] = [f for f in vips.FAMILIES if f in fams]
    for key, family, check in (("vip", vips.IPV4, names.vip), ("vip6", vips.IPV6, vips.vip6)):
        if key in spec:
            if family not in fams:
                raise Invalid(sub(path, key), f"the service has no {family} (ipFamilies {', '.join(fams)})")
            spec[key] = call(sub(path, key), check, spec[key])
    ports = spec.get("ports")
    if not ports:
        raise Invalid(sub(path, "ports"), "at least one port is required")
    by_port, by_name = {}, {}
    for i, p in enumerate(ports):
        pp = f"{path}.ports[{i}]"
        if "name" in p:
            call(f"{pp}.name", names.name, "port", p["name"])
            if p["name"] in by_name:
                raise Invalid(f"{pp}.name", f"duplicate port name {p['name']!r} (also {by_name[p['name']]})")
            by_name[p["name"]] = pp
        number = require(p, "port", pp)
        if number in by_port:
            raise Invalid(f"{pp}.port", f"duplicate port {number} (also {by_port[number]})")
        by_port[number] = pp
        p.setdefault("targetPort", number)
        # no protocol default: "" (undeclared) means sniff each connection, unlike "tcp"
    if "selector" in spec and "endpoints" in spec:
        raise Invalid(sub(path, "selector"), "selector and endpoints are mutually exclusive")
    if "selector" in spec:
        if not spec["selector"]:
            raise Invalid(sub(path, "selector"), "must name at least one label (an empty selector would pick every pod)")
        labels(spec["selector"], sub(path, "selector"))
    seen = {}
    for i, ep in enumerate(spec.get("endpoints", ())):
        ep_path = f"{path}.endpoints[{i}]"
        if "pod" in ep and ("address" in ep or "address6" in ep):
            raise Invalid(ep_path, "give either pod or address/address6, not both")
        if "pod" in ep:
            call(f"{ep_path}.pod", names.name, "pod", ep["pod"])
            ident = f"pod {ep['pod']}"
        elif "address" in ep or "address6" in ep:
            ident = "address " + "/".join(_addresses(ep, ep_path))
        else:
            raise Invalid(ep_path, "pod, address or address6 is required")
        if ep.get("port"):
            ident += f" port {ep['port']}"
        if ident in seen:
            raise Invalid(ep_path, f"duplicate endpoint {ident} (also {seen[ident]})")
        seen[ident] = ep_path
        labels(ep.get("labels", {}), f"{ep_path}.labels")
        if "zone" in ep:
            call(f"{ep_path}.zone", names.name, "zone", ep["zone"])
        ep.setdefault("weight", 1)
    if "healthCheck" in spec:
        check_health(spec["healthCheck"], sub(path, "healthCheck"))


def check_health(hc, path):
    kind = hc.setdefault("type", "tcp")
    if kind == "http":
        if "path" not in hc:
            raise Invalid(sub(path, "path"), "required for type http")
        _http_path(hc, "path", path)
    elif "path" in hc:
        raise Invalid(sub(path, "path"), "only valid for type http")
    interval = hc.setdefault("intervalMs", 10000)
    timeout = hc.setdefault("timeoutMs", min(1000, interval // 2))
    if timeout >= interval:
        raise Invalid(sub(path, "timeoutMs"), f"{timeout} must be less than intervalMs ({interval})")
    hc.setdefault("healthyThreshold", 1)
    hc.setdefault("unhealthyThreshold", 3)


def _addresses(ep, path) -> list:
    """An endpoint's address and address6 (either or both), checked and canonical in place."""
    out = []
    if "address" in ep:
        ep["address"] = call(sub(path, "address"), names.address, ep["address"], POD_RANGE, "endpoint address")
        out.append(ep["address"])
    if "address6" in ep:
        ep["address6"] = call(sub(path, "address6"), names.address6, ep["address6"], "endpoint IPv6 address")
        out.append(ep["address6"])
    return out


def check_endpoint(spec, path):
    call(sub(path, "service"), names.name, "service", require(spec, "service", path))
    if "address" not in spec and "address6" not in spec:
        raise Invalid(sub(path, "address"), "required (or address6)")
    _addresses(spec, path)
    require(spec, "port", path)
    labels(spec.get("labels", {}), sub(path, "labels"))
    for key in ("zone", "node", "pod"):
        if key in spec:
            call(sub(path, key), names.name, key, spec[key])
    spec.setdefault("weight", 1)
    spec.setdefault("health", "unknown")


def check_route(spec, path):
    call(sub(path, "service"), names.name, "service", require(spec, "service", path))
    rules = spec.get("rules")
    if not rules:
        raise Invalid(sub(path, "rules"), "at least one rule is required")
    for i, rule in enumerate(rules):
        rp = f"{path}.rules[{i}]"
        if "match" in rule:
            check_match(rule["match"], f"{rp}.match")
        if "split" in rule:
            for j, target in enumerate(rule["split"]):
                labels(target.get("subset", {}), f"{rp}.split[{j}].subset")
            total = sum(t.get("weight", 0) for t in rule["split"])
            if total != 100:
                raise Invalid(f"{rp}.split", f"weights add up to {total}, not 100")
        if "retries" in rule:
            retries, rtp = rule["retries"], f"{rp}.retries"
            require(retries, "attempts", rtp)
            for j, cond in enumerate(retries.get("on", ())):
                if cond not in RETRY_CONDITIONS and not _STATUS_CODE.fullmatch(cond):
                    raise Invalid(f"{rtp}.on[{j}]", f"{short(cond)} is not a retry condition (expected "
                                   f"{', '.join(RETRY_CONDITIONS)} or a 3-digit status code)")
            per_try, timeout = retries.get("perTryTimeoutMs"), rule.get("timeoutMs")
            if per_try and timeout and per_try > timeout:
                raise Invalid(f"{rtp}.perTryTimeoutMs", f"{per_try} exceeds the rule's timeoutMs ({timeout})")
        _headers(rule.get("setHeaders", {}), f"{rp}.setHeaders")
        if "fault" in rule:
            fault, fp = rule["fault"], f"{rp}.fault"
            if fault.get("delayPercent") and not fault.get("delayMs"):
                raise Invalid(sub(fp, "delayMs"), "required with delayPercent")
            if fault.get("abortPercent"):
                fault.setdefault("abortStatus", 503)


def check_match(match, path):
    if "host" in match and not (_HOST.fullmatch(match["host"]) and len(match["host"]) <= 253):
        raise Invalid(sub(path, "host"), f"invalid host {short(match['host'])}: use a lowercase DNS name, "
                       "optionally starting with '*.'")
    given = [k for k in ("pathExact", "pathPrefix", "pathRegex") if k in match]
    if len(given) > 1:
        raise Invalid(path, f"give only one of pathExact, pathPrefix, pathRegex (got {' and '.join(given)})")
    _http_path(match, "pathExact", path)
    _http_path(match, "pathPrefix", path)
    if "pathRegex" in match:
        try:
            re.compile(match["pathRegex"])
        except re.error as e:
            raise Invalid(sub(path, "pathRegex"),
                           f"invalid regular expression {short(match['pathRegex'])}: {e}") from None
    _headers(match.get("headers", {}), sub(path, "headers"))


def check_traffic_policy(spec, path):
    call(sub(path, "service"), names.name, "service", require(spec, "service", path))
    spec.setdefault("loadBalancer", "round_robin")
    spec.setdefault("retryAttempts", 1)  # one retry elsewhere, as without a policy; 0 turns it off
    if "outlierDetection" in spec:
        od = spec["outlierDetection"]
        od.setdefault("consecutiveFailures", 5)
        od.setdefault("baseEjectionMs", 30000)
        od.setdefault("maxEjectionPercent", 10)
    if "rateLimit" in spec:
        rl = spec["rateLimit"]
        rl.setdefault("burst", require(rl, "tokensPerSecond", sub(path, "rateLimit")))


def check_mesh_settings(spec, path):
    if "dnsSuffix" in spec:
        suffix = spec["dnsSuffix"]
        if not (_DNS_NAME.fullmatch(suffix) and len(suffix) <= 253):
            raise Invalid(sub(path, "dnsSuffix"), f"invalid DNS name {short(suffix)}: use lowercase labels of "
                           "letters, digits and '-' separated by dots, such as 'mesh.local'")
    if "upstreamDns" in spec:
        spec["upstreamDns"] = _upstream_dns(spec["upstreamDns"], sub(path, "upstreamDns"))
    seen = {}
    for i, ns in enumerate(spec.get("searchNamespaces", ())):
        np = f"{path}.searchNamespaces[{i}]"
        call(np, names.name, "namespace", ns)
        if ns in seen:
            raise Invalid(np, f"duplicate namespace {ns!r} (also {seen[ns]})")
        seen[ns] = np


def _upstream_dns(value, path) -> str:
    """'IP', 'IP:PORT', 'IPv6' or '[IPv6]:PORT' -> 'IP:PORT' / '[IPv6]:PORT' (port 53 by default)."""
    bad = Invalid(path, f"invalid DNS server {short(value)}: use IP or IP:PORT")
    host, port = value, "53"
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise bad
        port = rest[1:] if rest else port
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise bad from None
    if not port.isdigit():
        raise bad
    if not 1 <= int(port) <= 65535:
        raise Invalid(path, f"port {int(port)} is out of range 1-65535")
    return f"[{ip}]:{int(port)}" if ip.version == 6 else f"{ip}:{int(port)}"
