"""Fleet-wide memory rebalancing: a view of the fleet, policies, a simulation, the live loop.

* ``fleet_view``  -- ``FleetView``: what a policy may know (arrays, one entry per VM)
* ``policy``      -- the interface and shared mechanics (guest floor, host fitting, hysteresis)
* ``hyperv`` / ``mom`` / ``forecast`` -- the three policies (``hyperv``, ``mom``, ``hvdm``)
* ``oracle``      -- perfect foresight of the simulation's traces: the yardstick (simulation only)
* ``migration``   -- recommendations to move VMs off hosts short even after reclaiming everything
* ``policies``    -- the registry of names
* ``history``     -- per-VM sample histories for policies that look back
* ``traces`` / ``model`` / ``simulation`` / ``plot`` -- ``hvdm rebalance --simulate``
* ``projection`` / ``live`` -- ``hvdm rebalance --db``: event log -> view -> SetTarget inputs
* ``kafka_hosts`` / ``kafka_live`` / ``rebalancer_metrics`` -- ``hvdm rebalance --broker``: hosts
  topic, events topic -> view -> SetTarget inputs in the inbox topic, one active instance (lease)
"""

from .fleet_view import NO_TARGET, FleetView
from .policies import POLICIES, make_policy
from .policy import Policy

__all__ = ["NO_TARGET", "POLICIES", "FleetView", "Policy", "make_policy"]
