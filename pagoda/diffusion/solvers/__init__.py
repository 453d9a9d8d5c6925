"""Diffusion solvers as step functions (see base.py for the contract)."""

from pagoda.diffusion.solvers.base import Solver
from pagoda.diffusion.solvers.ddim import DDIM
from pagoda.diffusion.solvers.dpmpp_2m import DPMSolverPP2M
from pagoda.diffusion.solvers.euler import Euler, EulerAncestral
from pagoda.diffusion.solvers.unipc import UniPC, UniPCState

__all__ = ["DDIM", "DPMSolverPP2M", "Euler", "EulerAncestral", "Solver", "UniPC", "UniPCState"]
