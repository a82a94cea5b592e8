"""Monitors: thin readers and schedulers of FlowMesh's SQL."""
