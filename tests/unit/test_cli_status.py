"""glasswing status's text: the service ports learned as server-first."""
from glasswing.main import _print_status

BASE = {"running": True, "node": "n1", "pid": 1, "revision": 3, "pods": ["a"], "services": 2,
        "connections": 0, "relay": "kernel", "pump": "c", "pipes": {"lent": 0}}


def test_status_lists_the_server_first_ports_and_the_skipped_sniffs(capsys):
    marks = [{"service": "default/db", "port": 3306, "age_s": 12.3, "expires_in_s": 287.7, "skipped": 12,
              "probing": False},
             {"service": "default/smtp", "port": 25, "age_s": 301.0, "expires_in_s": -1.0, "skipped": 3,
              "probing": True}]
    _print_status({**BASE, "stats": {"sniff_skipped": 15}, "server_first": marks})
    out = capsys.readouterr().out
    assert "15 connections skipped the sniff" in out
    assert "default/db:3306  learned 12s ago, 12 skipped, recheck in 288s" in out
    assert "default/smtp:25  learned 301s ago, 3 skipped, probing" in out


def test_status_says_nothing_of_server_first_ports_when_none_was_seen(capsys):
    _print_status({**BASE, "stats": {"sniff_skipped": 0}, "server_first": []})
    assert "server-first" not in capsys.readouterr().out
