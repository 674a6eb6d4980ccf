"""SWIM membership as a sans-IO state machine: who is in the cluster and alive."""

from meshlimit.cluster.membership.swim import *  # noqa: F403 - the package's public names
