"""Scale-out on Ray: several boards profiling at once, and subnet evaluations in parallel.

Ray is an optional extra (``pip install 'hwnas[ray]'``): it is imported only when a fleet or a
parallel evaluation is asked for, and everything else in hwnas works without it.  Without a cluster
address a local Ray instance is started for the job and stopped after it.
"""

from hwnas.fleet.cluster import BOARD_RESOURCE_PREFIX, RAY_MISSING, board_resource, require_ray
from hwnas.fleet.profile import FleetBoard, load_fleet_file, profile_fleet

__all__ = ["BOARD_RESOURCE_PREFIX", "FleetBoard", "RAY_MISSING", "board_resource", "load_fleet_file", "profile_fleet",
           "require_ray"]
