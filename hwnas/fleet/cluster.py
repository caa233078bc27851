"""Connecting to Ray: a cluster named by address, or a local instance started for one job."""

from __future__ import annotations

import logging
import os
import re
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from hwnas.errors import DeviceUnavailableError, HwnasError

RAY_MISSING = "this needs Ray, which is not installed: pip install 'hwnas[ray]' (or pip install ray)"
#: each board is a Ray custom resource of capacity 1: the actor holding it asks for 1, so no two
#: measurements ever share a board, and on a cluster the actor runs on the node that declared it
BOARD_RESOURCE_PREFIX = "hwnas-board:"
ADDRESS_ENV = "HWNAS_RAY_ADDRESS"
#: a local instance lives on loopback: Ray maps 127.0.0.1 to the machine's network address, so an
#: address elsewhere in 127.0.0.0/8 keeps its processes' traffic off the network
LOCAL_NODE_IP = "127.0.0.2"


class RayClusterError(HwnasError, RuntimeError):
    """Ray could not be started or reached, or the cluster lacks what the job needs."""


def require_ray() -> Any:
    """The ``ray`` module, or one clear line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise DeviceUnavailableError(RAY_MISSING) from None
    return ray


def board_resource(name: str) -> str:
    """The custom resource that stands for the board of device ``name``."""
    return BOARD_RESOURCE_PREFIX + re.sub(r"[^A-Za-z0-9_.:-]", "_", name)


@contextmanager
def ray_session(address: str | None = None, *, resources: Mapping[str, float] | None = None,
                num_cpus: int | None = None) -> Iterator[dict[str, Any]]:
    """Ray for one job: connect to ``address`` (or ``$HWNAS_RAY_ADDRESS``), else start a local
    instance declaring ``resources`` (the boards) and ``num_cpus`` (default: this machine's cores).

    A driver already connected (``ray.is_initialized()``, e.g. a notebook or a test) is reused and
    left connected.  Yields ``{"address", "local", "start_s"}``; a local instance started here is
    stopped on exit.  On a cluster the board resources must already be declared by the nodes that
    reach the boards (``ray start --resources '{"hwnas-board:NAME": 1}'``); ``check_resources`` says
    which are missing.
    """
    ray = require_ray()
    address = address or os.environ.get(ADDRESS_ENV) or None
    if ray.is_initialized():
        yield {"address": "connected", "local": False, "start_s": 0.0}
        return
    t0 = time.perf_counter()
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
                          "configure_logging": True}
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=num_cpus if num_cpus is not None else os.cpu_count() or 1,
                     resources=dict(resources or {}), _node_ip_address=LOCAL_NODE_IP, **kw)
    except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError... by version
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise RayClusterError(f"cannot start or reach {where}: {str(exc).splitlines()[0] if str(exc) else exc!r}; "
                              "check the address (ray status on the head node)") from None
    try:
        yield {"address": address or "local", "local": not address, "start_s": time.perf_counter() - t0}
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """Fail in seconds, with one line, on a cluster address nothing answers at (Ray itself retries
    for minutes).  ``auto`` and addresses without a port are left to Ray."""
    import socket
    from urllib.parse import urlsplit

    if address == "auto":
        return
    u = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = u.hostname, u.port
    except ValueError:
        raise RayClusterError(f"Ray address {address!r} is not HOST:PORT") from None
    if not host or not port:
        return
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise RayClusterError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it with "
                              "ray start --head on that machine, or leave out the address to run Ray locally") from None


def check_resources(needed: Mapping[str, float]) -> None:
    """One line naming the custom resources the connected cluster does not have."""
    ray = require_ray()
    have = ray.cluster_resources()
    missing = [k for k, v in needed.items() if have.get(k, 0) < v]
    if missing:
        decl = ", ".join(f'"{k}": 1' for k in missing)
        raise RayClusterError(f"the Ray cluster declares no {', '.join(missing)}; start the node that reaches each "
                              f"board with ray start --resources '{{{decl}}}'")


__all__ = ["ADDRESS_ENV", "BOARD_RESOURCE_PREFIX", "RAY_MISSING", "RayClusterError", "board_resource",
           "check_resources", "ray_session", "require_ray"]
