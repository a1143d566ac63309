"""Kubeflow Pipelines IR run on the local executor: planning (pure), launching, caching, schedules."""
