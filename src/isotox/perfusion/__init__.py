"""DCE-CT perfusion: arterial input functions and tracer-kinetic models."""
from isotox.perfusion.fit import FitResult, fit

__all__ = ["FitResult", "fit"]
