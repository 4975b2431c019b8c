"""A rendered run: its folder (train.yaml, DeepSpeed config, data snapshot, scripts), its identity and outputs,
and the standard-library helpers its scripts call on a pod (resume point, node meeting, install)."""
