"""The integration topology, built with the real CLI code and torn down even
when tests fail:

    n1 (netns, forwarder)  --- underlay br0 ---  n2 (netns, forwarder)
      client  198.18.1.2                           web2 198.18.2.2 app=web
      web1    198.18.1.3 app=web
    services: web 80->8080 (selector app=web), near 7000 -> web1,
              far 7000 -> web2, iperf-near/far 5201, empty 80 (no endpoint),
              dead-far 7100 -> web2:7100 (nothing listens),
              socklb 7000 -> web1, web2 (picked in connect4, no forwarder)
"""
import pytest

from lab.cluster import Lab
from tests.support import leaks
from tests.support.mesh import client_and_two_webs, start_peers
from tests.support.need import need_root_and_bpf, need_tools


@pytest.fixture(scope="session")
def kernel_before():
    need_root_and_bpf()
    need_tools("iperf3", "curl", "bpftool")
    return leaks.snapshot()


@pytest.fixture(scope="module")
def mesh(kernel_before):
    lab = Lab("gwtest")
    try:
        client_and_two_webs(lab, web_labels={"app": "web"})
        lab.service("web", ports=["80:8080"], selector={"app": "web"})
        lab.service("near", ports=["7000"], endpoints=["web1"])
        lab.service("far", ports=["7000"], endpoints=["web2"])
        lab.service("iperf-near", ports=["5201"], endpoints=["web1"])
        lab.service("iperf-far", ports=["5201"], endpoints=["web2"])
        lab.service("empty", ports=["80"])
        lab.service("dead-far", ports=["7100"], endpoints=["web2"])
        lab.service("socklb", ports=["7000"], endpoints=["web1", "web2"], socket_lb=True)
        lab.up("n1")
        lab.up("n2")
        start_peers(lab, ("web1", "web2"), "client", iperf=True)
        doc = lab.doc
        lab.vips = {s["name"]: s["vip"] for s in doc["services"].values()}
        lab.ips = {n: p["ip"] for n, p in doc["pods"].items()}
        yield lab
    finally:
        lab.release()
        leaks.assert_clean(kernel_before, leaks.snapshot())
