"""Live monitors. Pure Python and numpy: no BentoML or torch import anywhere in this package."""
