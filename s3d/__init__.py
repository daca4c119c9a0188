"""s3d: signed splitting steepest descent for PyTorch networks."""
__version__ = "0.1.0"
