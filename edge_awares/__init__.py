"""edge-awares: low-resolution first, crops only where it matters.

Importing this package is cheap and torch-free; backends load their libraries only when asked for.
"""

__version__ = "0.1.0"
