"""DeepInv: the solver network, its presets and checkpoints, and its self-supervised trainer."""

from fastinv.solver.model import SolverModel, TorchSolver, check_solver_fits, load_solver
from fastinv.solver.network import DeepInvSolver
from fastinv.solver.presets import PRESETS, preset

__all__ = [
    "PRESETS",
    "DeepInvSolver",
    "SolverModel",
    "TorchSolver",
    "check_solver_fits",
    "load_solver",
    "preset",
]
