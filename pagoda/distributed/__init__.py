"""Tensor, pipeline and data parallelism: workers, executors, collectives and the layout planner."""
