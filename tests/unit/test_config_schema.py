"""dataplane.store.schema: documents users apply are parsed, validated strictly with one-line
errors naming file, document and field path, and convert to protobuf and back."""
import io
import json
import os
import re
import textwrap

import pytest
import yaml

from dataplane.store import schema as cs
from dataplane.errors import GlasswingError
from dataplane.proto import config_pb2 as pb

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "examples")


def y(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def load_text(tmp_path, text, name="doc.yaml"):
    path = tmp_path / name
    path.write_text(y(text))
    return cs.load_documents(str(path))


# ---- valid documents of every kind round-trip -------------------------------------------------
# Each document below is written with every default explicit, so YAML -> proto -> dict gives it back.

FULL = {
    "Service": """
        apiVersion: glasswing.dev/v1
        kind: Service
        metadata:
          name: orders
          namespace: shop
          labels: {team: checkout, app.kubernetes.io/name: orders}
          revision: 7
        spec:
          vip: 198.19.0.20
          vip6: 2001:2:0:ffff::c613:14
          ipFamilies: [IPv4, IPv6]
          ports:
            - {name: http, port: 80, targetPort: 8080, protocol: http}
            - {name: admin, port: 9000, targetPort: 9000, protocol: tcp}
          endpoints:
            - {pod: orders-1, port: 8081, labels: {version: v1}, zone: zone-a, weight: 3}
            - {address: 198.18.2.7, address6: 2001:2::c612:207, weight: 1}
          healthCheck:
            type: http
            path: /healthz
            intervalMs: 5000
            timeoutMs: 800
            healthyThreshold: 2
            unhealthyThreshold: 4
        """,
    "Endpoint": """
        apiVersion: glasswing.dev/v1
        kind: Endpoint
        metadata: {name: orders-1, namespace: shop}
        spec:
          service: orders
          address: 198.18.1.5
          port: 8080
          labels: {version: v2}
          zone: zone-b
          weight: 10
          health: healthy
          node: n1
          pod: orders-1
        """,
    "Route": """
        apiVersion: glasswing.dev/v1
        kind: Route
        metadata: {name: orders, namespace: default}
        spec:
          service: orders
          rules:
            - match:
                host: orders.shop.mesh.local
                pathRegex: ^/api/v[0-9]+/orders$
                method: POST
                headers: {x-canary: "1"}
              split:
                - {subset: {version: v1}, weight: 90}
                - {subset: {version: v2}, weight: 10}
              timeoutMs: 2000
              retries: {attempts: 3, perTryTimeoutMs: 500, on: [connect-failure, 5xx, "429"]}
              setHeaders: {x-mesh: glasswing}
            - match: {pathExact: /health}
            - match: {pathPrefix: /}
              split: [{weight: 100}]
        """,
    "TrafficPolicy": """
        apiVersion: glasswing.dev/v1
        kind: TrafficPolicy
        metadata: {name: orders, namespace: default}
        spec:
          service: orders
          loadBalancer: ring_hash
          connectTimeoutMs: 1500
          idleTimeoutMs: 60000
          maxConnections: 100
          maxPending: 10
          retryAttempts: 2
          outlierDetection: {consecutiveFailures: 3, baseEjectionMs: 10000, maxEjectionPercent: 0}
          rateLimit: {tokensPerSecond: 50, burst: 75}
        """,
    "MeshSettings": """
        apiVersion: glasswing.dev/v1
        kind: MeshSettings
        metadata: {name: mesh}
        spec:
          dnsSuffix: mesh.local
          upstreamDns: 198.18.0.1:5353
          searchNamespaces: [default, shop]
          defaultConnectTimeoutMs: 2500
        """,
}


@pytest.mark.parametrize("kind", sorted(FULL))
def test_full_documents_round_trip(tmp_path, kind):
    text = y(FULL[kind])
    [doc] = load_text(tmp_path, text)
    assert doc.kind == kind and doc.index == 1 and doc.file == str(tmp_path / "doc.yaml")
    assert isinstance(doc.message, cs.KINDS[kind])
    assert doc.raw == yaml.safe_load(re.sub(r"\bon:", "'on':", text))  # YAML 1.1 would read `on` as true
    assert cs.to_dict(doc.message, kind) == doc.raw
    # and the dict validates again to the same message (get -o yaml | apply -f - is a no-op)
    assert cs.validate(cs.to_dict(doc.message, kind), "x", 1) == doc.message


# Minimal documents and what they become once the defaults are filled in.
MINIMAL = [
    ("""
     apiVersion: glasswing.dev/v1
     kind: Service
     metadata: {name: web}
     spec:
       ports: [{port: 80}]
       endpoints: [{pod: web-1}, {address: 198.18.1.9, port: 81}]
       healthCheck: {}
     """,
     {"apiVersion": "glasswing.dev/v1", "kind": "Service",
      "metadata": {"name": "web", "namespace": "default"},
      "spec": {"ports": [{"port": 80, "targetPort": 80}],
               "endpoints": [{"pod": "web-1", "weight": 1}, {"address": "198.18.1.9", "port": 81, "weight": 1}],
               "healthCheck": {"type": "tcp", "intervalMs": 10000, "timeoutMs": 1000,
                               "healthyThreshold": 1, "unhealthyThreshold": 3},
               "ipFamilies": ["IPv4", "IPv6"]}}),
    ("""
     apiVersion: glasswing.dev/v1
     kind: Service
     metadata: {name: web}
     spec:
       ports: [{port: 80}]
       selector: {app: web}
       healthCheck: {type: http, path: /, intervalMs: 500}
     """,
     {"apiVersion": "glasswing.dev/v1", "kind": "Service",
      "metadata": {"name": "web", "namespace": "default"},
      "spec": {"ports": [{"port": 80, "targetPort": 80}], "selector": {"app": "web"},
               "healthCheck": {"type": "http", "path": "/", "intervalMs": 500, "timeoutMs": 250,
                               "healthyThreshold": 1, "unhealthyThreshold": 3},
               "ipFamilies": ["IPv4", "IPv6"]}}),
    ("""
     apiVersion: glasswing.dev/v1
     kind: Endpoint
     metadata: {name: web-1}
     spec: {service: web, address: 198.18.1.2, port: 8080}
     """,
     {"apiVersion": "glasswing.dev/v1", "kind": "Endpoint",
      "metadata": {"name": "web-1", "namespace": "default"},
      "spec": {"service": "web", "address": "198.18.1.2", "port": 8080, "weight": 1, "health": "unknown"}}),
    # IPv6: addresses become canonical text, families keep their order
    ("""
     apiVersion: glasswing.dev/v1
     kind: Service
     metadata: {name: web6}
     spec:
       ipFamilies: [IPv6]
       vip6: 2001:2:0:FFFF:0:0:0:1a
       ports: [{port: 80}]
       endpoints: [{address6: "2001:0002::c612:0109", port: 81}, {address: 198.18.1.10, address6: "2001:2::a"}]
     """,
     {"apiVersion": "glasswing.dev/v1", "kind": "Service",
      "metadata": {"name": "web6", "namespace": "default"},
      "spec": {"ports": [{"port": 80, "targetPort": 80}],
               "endpoints": [{"port": 81, "weight": 1, "address6": "2001:2::c612:109"},
                             {"address": "198.18.1.10", "weight": 1, "address6": "2001:2::a"}],
               "vip6": "2001:2:0:ffff::1a", "ipFamilies": ["IPv6"]}}),
    ("""
     apiVersion: glasswing.dev/v1
     kind: Service
     metadata: {name: web}
     spec: {ipFamilies: [IPv6, IPv4], ports: [{port: 80}]}
     """,
     {"apiVersion": "glasswing.dev/v1", "kind": "Service",
      "metadata": {"name": "web", "namespace": "default"},
      "spec": {"ports": [{"port": 80, "targetPort": 80}], "ipFamilies": ["IPv4", "IPv6"]}}),
    ("""
     apiVersion: glasswing.dev/v1
     kind: Endpoint
     metadata: {name: web-1}
     spec: {service: web, address6: "2001:2::c612:102", port: 8080}
     """,
     {"apiVersion": "glasswing.dev/v1", "kind": "Endpoint",
      "metadata": {"name": "web-1", "namespace": "default"},
      "spec": {"service": "web", "port": 8080, "weight": 1, "health": "unknown", "address6": "2001:2::c612:102"}}),
    ("""
     apiVersion: glasswing.dev/v1
     kind: Route
     metadata: {name: web}
     spec:
       service: web
       rules: [{match: {}}]
     """,
     {"apiVersion": "glasswing.dev/v1", "kind": "Route",
      "metadata": {"name": "web", "namespace": "default"},
      "spec": {"service": "web", "rules": [{"match": {}}]}}),
    ("""
     apiVersion: glasswing.dev/v1
     kind: TrafficPolicy
     metadata: {name: web}
     spec:
       service: web
       outlierDetection: {}
       rateLimit: {tokensPerSecond: 20}
     """,
     {"apiVersion": "glasswing.dev/v1", "kind": "TrafficPolicy",
      "metadata": {"name": "web", "namespace": "default"},
      "spec": {"service": "web", "loadBalancer": "round_robin", "retryAttempts": 1,
               "outlierDetection": {"consecutiveFailures": 5, "baseEjectionMs": 30000, "maxEjectionPercent": 10},
               "rateLimit": {"tokensPerSecond": 20, "burst": 20}}}),
    ("""
     apiVersion: glasswing.dev/v1
     kind: MeshSettings
     metadata: {name: mesh}
     spec: {upstreamDns: 198.18.0.1}
     """,
     {"apiVersion": "glasswing.dev/v1", "kind": "MeshSettings", "metadata": {"name": "mesh"},
      "spec": {"upstreamDns": "198.18.0.1:53"}}),
    ("""
     apiVersion: glasswing.dev/v1
     kind: MeshSettings
     metadata: {name: mesh}
     spec: {}
     """,
     {"apiVersion": "glasswing.dev/v1", "kind": "MeshSettings", "metadata": {"name": "mesh"}, "spec": {}}),
]


@pytest.mark.parametrize("text, want", MINIMAL, ids=[f"{w['kind']}-{i}" for i, (_, w) in enumerate(MINIMAL)])
def test_defaults_are_filled_in(tmp_path, text, want):
    [doc] = load_text(tmp_path, text)
    assert cs.to_dict(doc.message, doc.kind) == want
    assert cs.validate(want, "x", 1) == doc.message


def test_message_fields_hold_the_values():
    msg = cs.validate(yaml.safe_load(y(FULL["Service"])), "svc.yaml", 1)
    assert isinstance(msg, pb.Service)
    assert msg.metadata.namespace == "shop" and msg.metadata.revision == 7
    assert [(p.port, p.target_port, p.protocol) for p in msg.spec.ports] == [(80, 8080, "http"), (9000, 9000, "tcp")]
    assert msg.spec.health_check.interval_ms == 5000
    assert msg.spec.endpoints[0].pod == "orders-1" and msg.spec.endpoints[1].address == "198.18.2.7"
    route = cs.validate(cs._Loader(y(FULL["Route"])).get_single_data(), "r.yaml", 1)
    assert list(route.spec.rules[0].retries.on) == ["connect-failure", "5xx", "429"]
    assert route.spec.rules[0].match.path_regex == "^/api/v[0-9]+/orders$"


def test_yaml_1_2_scalars(tmp_path):
    # `on` is a key, not True; `yes` and dates stay strings; integer status codes become strings
    [doc] = load_text(tmp_path, """
        apiVersion: glasswing.dev/v1
        kind: Route
        metadata: {name: r, labels: {enabled: yes, since: 2024-01-01}}
        spec:
          service: web
          rules: [{retries: {attempts: 2, on: [503, reset]}}]
        """)
    assert dict(doc.message.metadata.labels) == {"enabled": "yes", "since": "2024-01-01"}
    assert list(doc.message.spec.rules[0].retries.on) == ["503", "reset"]


# ---- sources: multi-document files, directories, stdin --------------------------------------

SVC_A = "apiVersion: glasswing.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n"
SVC_B = "apiVersion: glasswing.dev/v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: 81}]}\n"
EP_A = ("apiVersion: glasswing.dev/v1\nkind: Endpoint\nmetadata: {name: a-1}\n"
        "spec: {service: a, address: 198.18.1.2, port: 80}\n")


def test_multi_document_file_skips_empty_documents(tmp_path):
    text = "# leading comment\n---\n" + SVC_A + "---\n---\n# just a comment\n---\n" + SVC_B + "---\n"
    docs = load_text(tmp_path, text)
    assert [(d.index, d.name) for d in docs] == [(1, "a"), (4, "b")]


def test_error_numbers_count_empty_documents(tmp_path):
    (tmp_path / "m.yaml").write_text(SVC_A + "---\n---\n" + SVC_B.replace("81", "0"))
    with pytest.raises(cs.ConfigError) as e:
        cs.load_documents(str(tmp_path / "m.yaml"))
    assert str(e.value) == f"{tmp_path / 'm.yaml'}: document 3: spec.ports[0].port: 0 is out of range 1-65535"


def test_empty_file_has_no_documents(tmp_path):
    assert load_text(tmp_path, "") == []
    assert load_text(tmp_path, "# nothing\n---\n") == []
    with pytest.raises(cs.ConfigError) as e:
        cs.load_all([str(tmp_path / "doc.yaml")])
    assert str(e.value) == f"no documents found in {tmp_path / 'doc.yaml'}"


def test_directory_reads_yaml_yml_json_sorted_not_recursive(tmp_path):
    (tmp_path / "b.yml").write_text(SVC_B)
    (tmp_path / "a.yaml").write_text(SVC_A)
    (tmp_path / "c.json").write_text(json.dumps([yaml.safe_load(EP_A)]))
    (tmp_path / "notes.txt").write_text("not: config\n")
    (tmp_path / ".hidden.yaml").write_text("garbage: [\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.yaml").write_text("garbage: [\n")
    docs = cs.load_all([str(tmp_path)])
    assert [(os.path.basename(d.file), d.index, d.kind, d.name) for d in docs] == [
        ("a.yaml", 1, "Service", "a"), ("b.yml", 1, "Service", "b"), ("c.json", 1, "Endpoint", "a-1")]


def test_empty_directory(tmp_path):
    assert cs.load_documents(str(tmp_path)) == []


def test_stdin_yaml_and_json():
    docs = cs.load_documents("-", stdin=io.StringIO(SVC_A + "---\n" + SVC_B))
    assert [(d.file, d.index, d.name) for d in docs] == [("<stdin>", 1, "a"), ("<stdin>", 2, "b")]
    one = cs.load_documents("-", stdin=io.StringIO(json.dumps(yaml.safe_load(SVC_A))))
    assert [(d.file, d.index, d.name) for d in one] == [("<stdin>", 1, "a")]
    many = cs.load_all(["-"], stdin=io.StringIO(json.dumps([yaml.safe_load(SVC_A), yaml.safe_load(SVC_B)])))
    assert [d.index for d in many] == [1, 2]


def test_stdin_defaults_to_sys_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(SVC_A))
    assert [d.name for d in cs.load_documents("-")] == ["a"]


def test_stdin_error_names_stdin():
    with pytest.raises(cs.ConfigError) as e:
        cs.load_all(["-"], stdin=io.StringIO(SVC_A.replace("Service", "Svc")))
    assert str(e.value).startswith("<stdin>: document 1: kind: unknown kind 'Svc'")


def test_missing_file(tmp_path):
    with pytest.raises(cs.ConfigError) as e:
        cs.load_all([str(tmp_path / "nope.yaml")])
    assert str(e.value) == f"{tmp_path / 'nope.yaml'}: no such file or directory"


def test_bad_json(tmp_path):
    (tmp_path / "x.json").write_text('{"apiVersion": "glasswing.dev/v1",\n "kind": }')
    with pytest.raises(cs.ConfigError) as e:
        cs.load_documents(str(tmp_path / "x.json"))
    assert str(e.value) == f"{tmp_path / 'x.json'}: invalid JSON: line 2 column 10: Expecting value"
    (tmp_path / "y.json").write_text('{"kind": "Service", "kind": "Route"}')
    with pytest.raises(cs.ConfigError) as e:
        cs.load_documents(str(tmp_path / "y.json"))
    assert str(e.value) == f"{tmp_path / 'y.json'}: invalid JSON: duplicate key 'kind'"


# ---- invalid documents: (yaml text, exact one-line message) ---------------------------------

def svc(spec: str, metadata: str = "{name: orders}") -> str:
    return f"apiVersion: glasswing.dev/v1\nkind: Service\nmetadata: {metadata}\nspec: {spec}\n"


def kind_doc(kind: str, spec: str, metadata: str = "{name: orders}") -> str:
    return f"apiVersion: glasswing.dev/v1\nkind: {kind}\nmetadata: {metadata}\nspec: {spec}\n"


def route(rule: str) -> str:
    return kind_doc("Route", f"{{service: orders, rules: [{rule}]}}")


P80 = "ports: [{port: 80}]"
NAME_RULE = "use 1-40 lowercase letters, digits and '-', starting and ending with a letter or digit"
LABEL_RULE = "use at most 63 letters, digits, '-', '_', '.' and '/', starting and ending with a letter or digit"
RETRY_EXPECTED = "(expected connect-failure, reset, 5xx, 502, 503, 504, retriable-4xx or a 3-digit status code)"

INVALID = [
    # top level
    ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n",
     "apiVersion: unsupported apiVersion 'v1' (expected glasswing.dev/v1)"),
    ("kind: Service\nmetadata: {name: a}\nspec: {}\n", "apiVersion: required"),
    ("apiVersion: glasswing.dev/v1\nmetadata: {name: a}\nspec: {}\n", "kind: required"),
    ("apiVersion: glasswing.dev/v1\nkind: Servic\nmetadata: {name: a}\nspec: {}\n",
     "kind: unknown kind 'Servic' (expected one of Endpoint, MeshSettings, Route, Service, TrafficPolicy)"),
    (svc(f"{{{P80}}}") + "status: {}\n", "status: unknown field (expected one of apiVersion, kind, metadata, spec)"),
    ("apiVersion: glasswing.dev/v1\nkind: Service\nspec: {ports: [{port: 80}]}\n", "metadata: required"),
    ("apiVersion: glasswing.dev/v1\nkind: Service\nmetadata: {name: a}\n", "spec: required"),
    ("apiVersion: glasswing.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n", "spec: expected a mapping, got null"),
    ("- apiVersion: glasswing.dev/v1\n- kind: Service\n",
     "expected a mapping with apiVersion, kind, metadata, spec, got a list"),
    ("apiVersion: glasswing.dev/v1\nkind: [Service\n",
     "invalid YAML: line 3 column 1: expected ',' or ']', but got '<stream end>'"),
    (svc(f"{{{P80}}}") + "kind: Route\n", "invalid YAML: line 5 column 1: duplicate key 'kind'"),
    # metadata
    (svc(f"{{{P80}}}", "{namespace: shop}"), "metadata.name: required"),
    (svc(f"{{{P80}}}", "{name: Orders}"), f"metadata.name: invalid service name 'Orders': {NAME_RULE}"),
    (svc(f"{{{P80}}}", "{name: " + "a" * 41 + "}"), f"metadata.name: invalid service name '{'a' * 41}': {NAME_RULE}"),
    (svc(f"{{{P80}}}", "{name: 5}"), "metadata.name: expected a string, got integer 5"),
    (svc(f"{{{P80}}}", "{name: a, namespace: Shop_1}"), f"metadata.namespace: invalid namespace name 'Shop_1': {NAME_RULE}"),
    (svc(f"{{{P80}}}", "{name: a, annotations: {}}"),
     "metadata.annotations: unknown field (expected one of name, namespace, labels, revision)"),
    (svc(f"{{{P80}}}", "{name: a, labels: {bad key: x}}"), f"metadata.labels: invalid label key 'bad key': {LABEL_RULE}"),
    (svc(f"{{{P80}}}", "{name: a, labels: {app: -web}}"), f"metadata.labels.app: invalid label value '-web': {LABEL_RULE}"),
    (svc(f"{{{P80}}}", "{name: a, labels: [app, web]}"), "metadata.labels: expected a mapping, got a list"),
    (svc(f"{{{P80}}}", "{name: a, labels: {version: 2}}"), "metadata.labels.version: expected a string, got integer 2"),
    (svc(f"{{{P80}}}", "{name: a, revision: -1}"), "metadata.revision: -1 is out of range 0-9223372036854775807"),
    # Service ports
    (svc("{ports: [{port: 70000}]}"), "spec.ports[0].port: 70000 is out of range 1-65535"),
    (svc("{ports: [{port: 0}]}"), "spec.ports[0].port: 0 is out of range 1-65535"),
    (svc("{ports: [{port: '80'}]}"), "spec.ports[0].port: expected an integer, got string '80'"),
    (svc("{ports: [{port: 80.5}]}"), "spec.ports[0].port: expected an integer, got number 80.5"),
    (svc("{ports: [{port: true}]}"), "spec.ports[0].port: expected an integer, got boolean true"),
    (svc("{ports: [{port: 80, targetPort: 0}]}"), "spec.ports[0].targetPort: 0 is out of range 1-65535"),
    (svc("{ports: [{port: 80, target_port: 8080}]}"), "spec.ports[0].target_port: unknown field (did you mean targetPort?)"),
    (svc("{ports: [{port: 80, tls: true}]}"), "spec.ports[0].tls: unknown field (expected one of name, port, targetPort, protocol)"),
    (svc("{selector: {app: web}}"), "spec.ports: at least one port is required"),
    (svc("{ports: {port: 80}}"), "spec.ports: expected a list, got a mapping"),
    (svc("{ports: [{name: http}]}"), "spec.ports[0].port: required"),
    (svc("{ports: [{port: 80}, {port: 80, targetPort: 81}]}"), "spec.ports[1].port: duplicate port 80 (also spec.ports[0])"),
    (svc("{ports: [{name: web, port: 80}, {name: web, port: 81}]}"),
     "spec.ports[1].name: duplicate port name 'web' (also spec.ports[0])"),
    (svc("{ports: [{port: 80, protocol: udp}]}"), "spec.ports[0].protocol: 'udp' is not one of tcp, http"),
    # Service vip, selector, endpoints
    (svc(f"{{vip: 10.0.0.1, {P80}}}"), "spec.vip: service address 10.0.0.1 is outside 198.19.0.0/16"),
    (svc(f"{{vip: abc, {P80}}}"), "spec.vip: invalid service address 'abc': not an IPv4 address"),
    # Service IPv6 VIP and families
    (svc(f"{{vip6: 2001:2:0:fffe::1, {P80}}}"),
     "spec.vip6: IPv6 service address 2001:2:0:fffe::1 is outside 2001:2:0:ffff::/64"),
    (svc(f"{{vip6: 198.19.0.1, {P80}}}"),
     "spec.vip6: invalid IPv6 service address '198.19.0.1': not an IPv6 address"),
    (svc(f"{{vip6: '2001:2:0:ffff::', {P80}}}"),
     "spec.vip6: IPv6 service address 2001:2:0:ffff:: is the network address of 2001:2:0:ffff::/64"),
    (svc(f"{{ipFamilies: [ipv6], {P80}}}"), "spec.ipFamilies[0]: 'ipv6' is not one of IPv4, IPv6"),
    (svc(f"{{ipFamilies: IPv6, {P80}}}"), "spec.ipFamilies: expected a list, got string 'IPv6'"),
    (svc(f"{{ipFamilies: [], {P80}}}"),
     "spec.ipFamilies: at least one of IPv4, IPv6 is required (omit it for both)"),
    (svc(f"{{ipFamilies: [IPv6, IPv6], {P80}}}"), "spec.ipFamilies: a family is given twice in IPv6, IPv6"),
    (svc(f"{{ipFamilies: [IPv6], vip: 198.19.0.5, {P80}}}"), "spec.vip: the service has no IPv4 (ipFamilies IPv6)"),
    (svc(f"{{ipFamilies: [IPv4], vip6: '2001:2:0:ffff::5', {P80}}}"),
     "spec.vip6: the service has no IPv6 (ipFamilies IPv4)"),
    (svc(f"{{{P80}, endpoints: [{{address6: '2001:3::1'}}]}}"),
     "spec.endpoints[0].address6: endpoint IPv6 address 2001:3::1 is outside 2001:2::/48"),
    (svc(f"{{{P80}, endpoints: [{{address6: '2001:2:0:ffff::9'}}]}}"),
     "spec.endpoints[0].address6: endpoint IPv6 address 2001:2:0:ffff::9 is inside the service range "
     "2001:2:0:ffff::/64"),
    (svc(f"{{{P80}, endpoints: [{{address6: 198.18.1.2}}]}}"),
     "spec.endpoints[0].address6: invalid endpoint IPv6 address '198.18.1.2': not an IPv6 address"),
    (svc(f"{{{P80}, endpoints: [{{pod: web, address6: '2001:2::1'}}]}}"),
     "spec.endpoints[0]: give either pod or address/address6, not both"),
    (svc(f"{{{P80}, endpoints: [{{address6: '2001:2::1'}}, {{address6: '2001:2:0:0::1'}}]}}"),
     "spec.endpoints[1]: duplicate endpoint address 2001:2::1 (also spec.endpoints[0])"),
    (svc(f"{{{P80}, selector: {{app: web}}, endpoints: [{{pod: web}}]}}"),
     "spec.selector: selector and endpoints are mutually exclusive"),
    (svc(f"{{{P80}, selector: [app]}}"), "spec.selector: expected a mapping, got a list"),
    (svc(f"{{{P80}, selector: {{}}}}"),
     "spec.selector: must name at least one label (an empty selector would pick every pod)"),
    (svc(f"{{{P80}, selector: {{app.kubernetes.io/name: 3}}}}"),
     'spec.selector["app.kubernetes.io/name"]: expected a string, got integer 3'),
    (svc(f"{{{P80}, endpoints: [{{pod: web, address: 198.18.1.2}}]}}"),
     "spec.endpoints[0]: give either pod or address/address6, not both"),
    (svc(f"{{{P80}, endpoints: [{{port: 8080}}]}}"), "spec.endpoints[0]: pod, address or address6 is required"),
    (svc(f"{{{P80}, endpoints: [{{address: 10.1.2.3}}]}}"),
     "spec.endpoints[0].address: endpoint address 10.1.2.3 is outside 198.18.0.0/16"),
    (svc(f"{{{P80}, endpoints: [{{pod: Web}}]}}"), f"spec.endpoints[0].pod: invalid pod name 'Web': {NAME_RULE}"),
    (svc(f"{{{P80}, endpoints: [{{pod: web, weight: 0}}]}}"), "spec.endpoints[0].weight: 0 is out of range 1-1000"),
    (svc(f"{{{P80}, endpoints: [{{pod: web, weight: 1001}}]}}"), "spec.endpoints[0].weight: 1001 is out of range 1-1000"),
    (svc(f"{{{P80}, endpoints: [{{pod: web, port: 70000}}]}}"), "spec.endpoints[0].port: 70000 is out of range 1-65535"),
    (svc(f"{{{P80}, endpoints: [{{pod: web}}, {{pod: web}}]}}"),
     "spec.endpoints[1]: duplicate endpoint pod web (also spec.endpoints[0])"),
    (svc(f"{{{P80}, endpoints: [{{pod: web, labels: {{v: 'a b'}}}}]}}"),
     f"spec.endpoints[0].labels.v: invalid label value 'a b': {LABEL_RULE}"),
    # Service health check
    (svc(f"{{{P80}, healthCheck: {{type: grpc}}}}"), "spec.healthCheck.type: 'grpc' is not one of tcp, http"),
    (svc(f"{{{P80}, healthCheck: {{type: http}}}}"), "spec.healthCheck.path: required for type http"),
    (svc(f"{{{P80}, healthCheck: {{type: http, path: healthz}}}}"),
     "spec.healthCheck.path: must start with '/', got 'healthz'"),
    (svc(f"{{{P80}, healthCheck: {{path: /healthz}}}}"), "spec.healthCheck.path: only valid for type http"),
    (svc(f"{{{P80}, healthCheck: {{healthyThreshold: 0}}}}"), "spec.healthCheck.healthyThreshold: must be at least 1, got 0"),
    (svc(f"{{{P80}, healthCheck: {{unhealthyThreshold: 0}}}}"),
     "spec.healthCheck.unhealthyThreshold: must be at least 1, got 0"),
    (svc(f"{{{P80}, healthCheck: {{intervalMs: 50}}}}"), "spec.healthCheck.intervalMs: must be at least 100, got 50"),
    (svc(f"{{{P80}, healthCheck: {{timeoutMs: 0}}}}"), "spec.healthCheck.timeoutMs: must be at least 1, got 0"),
    (svc(f"{{{P80}, healthCheck: {{intervalMs: 500, timeoutMs: 500}}}}"),
     "spec.healthCheck.timeoutMs: 500 must be less than intervalMs (500)"),
    (svc(f"{{{P80}, healthCheck: {{port: 1}}}}"),
     "spec.healthCheck.port: unknown field (expected one of type, path, intervalMs, timeoutMs, healthyThreshold, "
     "unhealthyThreshold)"),
    # Endpoint
    (kind_doc("Endpoint", "{service: orders, port: 80}"), "spec.address: required (or address6)"),
    (kind_doc("Endpoint", "{address: 198.18.1.2, port: 80}"), "spec.service: required"),
    (kind_doc("Endpoint", "{service: orders, address6: '2001:2::g', port: 80}"),
     "spec.address6: invalid endpoint IPv6 address '2001:2::g': not an IPv6 address"),
    (kind_doc("Endpoint", "{service: orders, address: 198.18.1.2}"), "spec.port: required"),
    (kind_doc("Endpoint", "{service: orders, address: 198.19.0.5, port: 80}"),
     "spec.address: endpoint address 198.19.0.5 is outside 198.18.0.0/16"),
    (kind_doc("Endpoint", "{service: orders, address: 198.18.1.2, port: 80, health: sick}"),
     "spec.health: 'sick' is not one of healthy, unhealthy, unknown"),
    (kind_doc("Endpoint", "{service: orders, address: 198.18.1.2, port: 80, weight: 5000}"),
     "spec.weight: 5000 is out of range 1-1000"),
    # Route
    (kind_doc("Route", "{rules: [{}]}"), "spec.service: required"),
    (kind_doc("Route", "{service: orders}"), "spec.rules: at least one rule is required"),
    (route("{match: {pathRegex: '('}}"),
     "spec.rules[0].match.pathRegex: invalid regular expression '(': missing ), unterminated subpattern at position 0"),
    (route("{match: {pathExact: /a, pathPrefix: /}}"),
     "spec.rules[0].match: give only one of pathExact, pathPrefix, pathRegex (got pathExact and pathPrefix)"),
    (route("{match: {pathPrefix: api}}"), "spec.rules[0].match.pathPrefix: must start with '/', got 'api'"),
    (route("{match: {method: FETCH}}"),
     "spec.rules[0].match.method: 'FETCH' is not one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH"),
    (route("{match: {host: Orders_Svc}}"),
     "spec.rules[0].match.host: invalid host 'Orders_Svc': use a lowercase DNS name, optionally starting with '*.'"),
    (route("{match: {headers: {'x y': a}}}"), "spec.rules[0].match.headers: invalid header name 'x y'"),
    (route("{match: {uri: /}}"),
     "spec.rules[0].match.uri: unknown field (expected one of host, pathExact, pathPrefix, pathRegex, method, headers)"),
    (route("{split: [{subset: {v: a}, weight: 90}, {subset: {v: b}, weight: 5}]}"),
     "spec.rules[0].split: weights add up to 95, not 100"),
    (route("{split: [{weight: 101}]}"), "spec.rules[0].split[0].weight: 101 is out of range 0-100"),
    (route("{retries: {attempts: 2, on: [5xx, gateway-error]}}"),
     f"spec.rules[0].retries.on[1]: 'gateway-error' is not a retry condition {RETRY_EXPECTED}"),
    (route("{retries: {attempts: 2, on: [99]}}"), f"spec.rules[0].retries.on[0]: '99' is not a retry condition {RETRY_EXPECTED}"),
    (route("{retries: {attempts: 11}}"), "spec.rules[0].retries.attempts: 11 is out of range 1-10"),
    (route("{retries: {on: [reset]}}"), "spec.rules[0].retries.attempts: required"),
    (route("{timeoutMs: 1000, retries: {attempts: 2, perTryTimeoutMs: 1500}}"),
     "spec.rules[0].retries.perTryTimeoutMs: 1500 exceeds the rule's timeoutMs (1000)"),
    (route("{setHeaders: {'bad header': x}}"), "spec.rules[0].setHeaders: invalid header name 'bad header'"),
    # TrafficPolicy
    (kind_doc("TrafficPolicy", "{service: orders, loadBalancer: random}"),
     "spec.loadBalancer: 'random' is not one of round_robin, weighted, least_request, ring_hash"),
    (kind_doc("TrafficPolicy", "{service: orders, outlierDetection: {maxEjectionPercent: 150}}"),
     "spec.outlierDetection.maxEjectionPercent: 150 is out of range 0-100"),
    (kind_doc("TrafficPolicy", "{service: orders, connectTimeoutMs: 1s}"),
     "spec.connectTimeoutMs: expected an integer, got string '1s'"),
    (kind_doc("TrafficPolicy", "{service: orders, rateLimit: {burst: 5}}"), "spec.rateLimit.tokensPerSecond: required"),
    (kind_doc("TrafficPolicy", "{service: orders, retryAttempts: 20}"), "spec.retryAttempts: 20 is out of range 0-10"),
    (kind_doc("TrafficPolicy", "{loadBalancer: weighted}"), "spec.service: required"),
    # MeshSettings
    (kind_doc("MeshSettings", "{}", "{name: settings}"), "metadata.name: MeshSettings must be named 'mesh', not 'settings'"),
    (kind_doc("MeshSettings", "{}", "{name: mesh, namespace: default}"),
     "metadata.namespace: MeshSettings is cluster-wide and takes no namespace"),
    (kind_doc("MeshSettings", "{dnsSuffix: Mesh..local}", "{name: mesh}"),
     "spec.dnsSuffix: invalid DNS name 'Mesh..local': use lowercase labels of letters, digits and '-' separated by "
     "dots, such as 'mesh.local'"),
    (kind_doc("MeshSettings", "{upstreamDns: dns.google}", "{name: mesh}"),
     "spec.upstreamDns: invalid DNS server 'dns.google': use IP or IP:PORT"),
    (kind_doc("MeshSettings", "{upstreamDns: '198.18.0.1:70000'}", "{name: mesh}"),
     "spec.upstreamDns: port 70000 is out of range 1-65535"),
    (kind_doc("MeshSettings", "{searchNamespaces: [shop, shop]}", "{name: mesh}"),
     "spec.searchNamespaces[1]: duplicate namespace 'shop' (also spec.searchNamespaces[0])"),
    (kind_doc("MeshSettings", "{defaultConnectTimeoutMs: 0}", "{name: mesh}"),
     "spec.defaultConnectTimeoutMs: must be at least 1, got 0"),
]


@pytest.mark.parametrize("text, message", INVALID, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(INVALID)])
def test_invalid_document(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(cs.ConfigError) as e:
        cs.load_all(["bad.yaml"])
    assert str(e.value) == f"bad.yaml: document 1: {message}"
    assert "\n" not in str(e.value)
    assert isinstance(e.value, GlasswingError)
    assert (e.value.file, e.value.index) == ("bad.yaml", 1)


def test_invalid_table_is_large_and_distinct():
    assert len(INVALID) >= 40
    assert len({t for t, _ in INVALID}) == len(INVALID)


def test_error_in_second_document_names_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "svc.yaml").write_text(SVC_A + "---\n" + svc("{ports: [{port: 70000}]}"))
    with pytest.raises(cs.ConfigError) as e:
        cs.load_all(["svc.yaml"])
    assert str(e.value) == "svc.yaml: document 2: spec.ports[0].port: 70000 is out of range 1-65535"
    assert (e.value.path, e.value.reason) == ("spec.ports[0].port", "70000 is out of range 1-65535")


def test_yaml_syntax_error_in_second_document(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "svc.yaml").write_text(SVC_A + "---\nkind: Service\n  name: x\n")
    with pytest.raises(cs.ConfigError) as e:
        cs.load_all(["svc.yaml"])
    assert str(e.value) == "svc.yaml: document 2: invalid YAML: line 7 column 7: mapping values are not allowed here"


def test_validate_directly():
    with pytest.raises(cs.ConfigError) as e:
        cs.validate({"apiVersion": cs.API_VERSION, "kind": "Service", "metadata": {"name": "a"},
                     "spec": {"ports": [{"port": 80, "targetPort": 70000}]}}, "svc.yaml", 2)
    assert str(e.value) == "svc.yaml: document 2: spec.ports[0].targetPort: 70000 is out of range 1-65535"
    with pytest.raises(cs.ConfigError) as e:
        cs.validate({1: 2}, "x.json", 1)
    assert str(e.value) == "x.json: document 1: field names must be strings, got integer 1"


# ---- all or nothing, duplicates --------------------------------------------------------------

def test_one_bad_document_of_three_stores_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "three.yaml").write_text(SVC_A + "---\n" + svc("{ports: [{port: 80, protocol: udp}]}") + "---\n" + SVC_B)
    stored = []
    with pytest.raises(cs.ConfigError) as e:
        stored.extend(cs.load_all(["three.yaml"]))
    assert stored == []
    assert str(e.value) == "three.yaml: document 2: spec.ports[0].protocol: 'udp' is not one of tcp, http"


def test_first_error_wins_across_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text(SVC_A + "---\n" + svc("{ports: []}"))
    (tmp_path / "b.yaml").write_text(svc("{ports: [{port: 0}]}"))
    with pytest.raises(cs.ConfigError) as e:
        cs.load_all(["b.yaml", "a.yaml"])
    assert str(e.value).startswith("b.yaml: document 1: spec.ports[0].port")


def test_duplicate_names_across_two_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "one.yaml").write_text(SVC_B + "---\n" + SVC_A.replace("{name: a}", "{name: orders}"))
    (tmp_path / "two.yaml").write_text(EP_A + "---\n" + svc("{ports: [{port: 9000}]}", "{name: orders, namespace: default}"))
    with pytest.raises(cs.ConfigError) as e:
        cs.load_all(["one.yaml", "two.yaml"])
    assert str(e.value) == ("two.yaml: document 2: metadata.name: duplicate Service default/orders "
                            "(also document 2 of one.yaml)")


def test_same_name_in_other_namespace_or_kind_is_fine(tmp_path):
    (tmp_path / "a.yaml").write_text(SVC_A + "---\n" + SVC_A.replace("{name: a}", "{name: a, namespace: other}") +
                                     "---\n" + kind_doc("TrafficPolicy", "{service: a}", "{name: a}"))
    docs = cs.load_all([str(tmp_path / "a.yaml")])
    assert [d.key for d in docs] == ["/glasswing/config/service/default/a", "/glasswing/config/service/other/a",
                                     "/glasswing/config/trafficpolicy/default/a"]


def test_only_one_mesh_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mesh = kind_doc("MeshSettings", "{}", "{name: mesh}")
    (tmp_path / "m.yaml").write_text(mesh + "---\n" + mesh)
    with pytest.raises(cs.ConfigError) as e:
        cs.load_all(["m.yaml"])
    assert str(e.value) == "m.yaml: document 2: metadata.name: duplicate MeshSettings mesh (also document 1 of m.yaml)"


# ---- keys, output ----------------------------------------------------------------------------

def test_key_for():
    svc_msg = pb.Service(metadata=pb.Metadata(name="orders", namespace="shop"))
    assert cs.key_for("Service", svc_msg) == "/glasswing/config/service/shop/orders"
    assert cs.key_for("TrafficPolicy", pb.TrafficPolicy(metadata=pb.Metadata(name="p"))) == \
        "/glasswing/config/trafficpolicy/default/p"
    assert cs.key_for("MeshSettings", pb.MeshSettings(metadata=pb.Metadata(name="mesh"))) == \
        "/glasswing/config/meshsettings/-/mesh"
    with pytest.raises(GlasswingError):
        cs.key_for("Pod", svc_msg)


def test_dump_yaml_and_json_load_again(tmp_path):
    docs = cs.load_all([EXAMPLES])
    dicts = [cs.to_dict(d.message, d.kind) for d in docs]
    (tmp_path / "out.yaml").write_text(cs.dump_yaml(dicts))
    (tmp_path / "out.json").write_text(cs.dump_json(dicts))
    (tmp_path / "one.json").write_text(cs.dump_json(dicts[0]))
    for name in ("out.yaml", "out.json"):
        again = cs.load_documents(str(tmp_path / name))
        assert [d.message for d in again] == [d.message for d in docs]
        assert [d.index for d in again] == [1, 2, 3, 4]
    assert [d.message for d in cs.load_documents(str(tmp_path / "one.json"))] == [docs[0].message]
    assert cs.dump_yaml(dicts).startswith("apiVersion: glasswing.dev/v1\nkind: Service\nmetadata:\n")
    assert cs.dump_yaml(dicts).count("\n---\n") == 3
    assert json.loads(cs.dump_json(dicts)) == dicts
    assert cs.dump_yaml([]) == ""


def test_to_dict_sorts_maps_and_omits_zero_values():
    msg = pb.Service(metadata=pb.Metadata(name="a", labels={"z": "1", "a": "2"}),
                     spec=pb.ServiceSpec(ports=[pb.ServicePort(port=80)]))
    d = cs.to_dict(msg, "Service")
    assert list(d["metadata"]["labels"]) == ["a", "z"]
    assert d == {"apiVersion": cs.API_VERSION, "kind": "Service",
                 "metadata": {"name": "a", "labels": {"a": "2", "z": "1"}}, "spec": {"ports": [{"port": 80}]}}


def test_document_is_frozen(tmp_path):
    [doc] = load_text(tmp_path, SVC_A)
    with pytest.raises(AttributeError):
        doc.kind = "Route"


# ---- examples --------------------------------------------------------------------------------

def test_examples_load():
    docs = cs.load_all([EXAMPLES])
    assert [(d.kind, d.namespace, d.name) for d in docs] == [
        ("Service", "shop", "orders"), ("Route", "shop", "orders-canary"),
        ("TrafficPolicy", "shop", "orders"), ("MeshSettings", "", "mesh")]
    service, route_, policy, mesh = (d.message for d in docs)
    assert dict(service.spec.selector) == {"app": "orders"}
    assert service.spec.health_check.type == "http" and service.spec.health_check.path == "/healthz"
    assert [t.weight for t in route_.spec.rules[0].split] == [90, 10]
    assert policy.spec.load_balancer == "least_request"
    assert mesh.spec.dns_suffix == "mesh.local"
    assert [d.key for d in docs][-1] == "/glasswing/config/meshsettings/-/mesh"


def test_every_kind_has_a_message_class():
    assert sorted(cs.KINDS) == ["Endpoint", "MeshSettings", "Route", "Service", "TrafficPolicy"]
    for kind, cls in cs.KINDS.items():
        assert cls.DESCRIPTOR.full_name == f"glasswing.config.v1.{kind}"


def test_protocol_stays_undeclared_when_omitted(tmp_path):
    [doc] = load_text(tmp_path, """
     apiVersion: glasswing.dev/v1
     kind: Service
     metadata: {name: web}
     spec: {ports: [{port: 80}, {port: 81, protocol: tcp}, {port: 82, protocol: http}], selector: {app: web}}
     """)
    assert [p.protocol for p in doc.message.spec.ports] == ["", "tcp", "http"]


def test_route_fault_and_marked_safe_retries(tmp_path):
    [doc] = load_text(tmp_path, """
     apiVersion: glasswing.dev/v1
     kind: Route
     metadata: {name: web}
     spec:
       service: web
       rules:
       - fault: {abortPercent: 10}
         retries: {attempts: 2, on: [5xx], retryNonIdempotent: true}
     """)
    rule = doc.message.spec.rules[0]
    assert (rule.fault.abort_status, rule.fault.abort_percent) == (503, 10)
    assert rule.retries.retry_non_idempotent


@pytest.mark.parametrize("fault, why", [
    ("{delayPercent: 5}", "spec.rules[0].fault.delayMs: required with delayPercent"),
    ("{abortPercent: 101}", "spec.rules[0].fault.abortPercent"),
    ("{abortPercent: 5, abortStatus: 99}", "spec.rules[0].fault.abortStatus"),
])
def test_bad_faults_are_refused(tmp_path, fault, why):
    with pytest.raises(cs.ConfigError) as e:
        load_text(tmp_path, f"""
         apiVersion: glasswing.dev/v1
         kind: Route
         metadata: {{name: web}}
         spec: {{service: web, rules: [{{fault: {fault}}}]}}
         """)
    assert why in str(e.value)
