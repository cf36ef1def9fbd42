"""Ray cluster helpers and configs (docs/CLUSTERS.md).

- `cluster.address.resolve_address`: the single place where a sweep decides which Ray cluster
  to join (`--address`, else `RAY_ADDRESS`, else a local Ray).
- `cluster.wait_for_nodes`: wait, by polling, until a cluster has N live nodes.
- `cluster.free_ports`: N free TCP ports of this host, for the scripts that start Ray nodes.
- `cluster/ray-cluster.yaml`, `cluster/ray-cluster-aws.yaml`: Ray cluster-launcher configs
  (`ray up`) for on-prem GPU machines and for AWS GPU instances.
- `cluster/start_local_cluster.sh`: a head and N workers on one workstation.
- `cluster.slurm` (`prmf-slurm`) and `cluster/launch_ray.sh` (also `slurm/launch_ray.sh` in a
  checkout): the same on a Slurm allocation; `cluster.local_slurm`: a Slurm on one workstation.
"""
from .address import resolve_address

__all__ = ["resolve_address"]
