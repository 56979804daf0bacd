"""Tools to prove gradients: `gradcheck` (central finite differences in float64),
`gradcheck_module` (the same for a module's inputs and parameters), and Hypothesis
strategies for the shapes and arrays transformer ops need (`minillm.testing.strategies`,
which needs the `hypothesis` package)."""
from .gradcheck import GradcheckError, check_gradients, gradcheck, gradcheck_module, numerical_gradient

__all__ = ["gradcheck", "gradcheck_module", "check_gradients", "numerical_gradient", "GradcheckError"]
