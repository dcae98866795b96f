"""solopo: long-context preference optimisation by short-to-long reward alignment (SoLoPO)."""
__version__ = "0.1.0"
