"""Compiled kernels for the hot paths that eager PyTorch serves poorly (see ``cpu_kernels``)."""
