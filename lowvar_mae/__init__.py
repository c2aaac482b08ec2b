"""lowvar-mae: masked autoencoders that reconstruct low-variance PCA components.

Importing the package has no side effects: no device probing, no global torch
flags, no output.
"""

__version__ = "0.1.0"
