from streamproc.topology.model import (
    Change,
    TopicSpec,
    TopicState,
    fit_to_cluster,
    load_topology,
    plan,
)

__all__ = ["Change", "TopicSpec", "TopicState", "fit_to_cluster", "load_topology", "plan"]
