"""Scientific machine learning on diffprog: differentiable ODE solvers.

>>> import numpy as np
>>> from diffprog.sciml import odeint
>>> ys = odeint(lambda y, t, k: -k * y, np.array([1.0]), np.linspace(0, 1, 3), np.array(2.0))
>>> np.round(ys[:, 0], 4)
array([1.    , 0.3679, 0.1353])
"""
from .odeint import odeint

__all__ = ["odeint"]
