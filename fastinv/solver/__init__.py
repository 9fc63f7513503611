"""DeepInv: the solver networks (paper and warm-start designs), presets, checkpoints and the trainer."""

from fastinv.solver.model import SolverModel, TorchSolver, check_solver_fits, load_solver
from fastinv.solver.network import DeepInvSolver
from fastinv.solver.presets import PRESETS, build_solver, preset
from fastinv.solver.warm_start import WarmStartSolver

__all__ = [
    "PRESETS",
    "DeepInvSolver",
    "SolverModel",
    "TorchSolver",
    "WarmStartSolver",
    "build_solver",
    "check_solver_fits",
    "load_solver",
    "preset",
]
