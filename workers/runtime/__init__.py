"""The worker process around the engine: start and stop (lifecycle), its heartbeat and the operator's
commands, memory figures, and the cluster's bounded stop."""
