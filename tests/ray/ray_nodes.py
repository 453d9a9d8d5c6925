"""The loopback addresses of the test cluster's two nodes (see conftest.py)."""

from __future__ import annotations

import ipaddress

HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback
