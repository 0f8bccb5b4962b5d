"""tailseg: map mining tailings in Sentinel-2 imagery with a U-Net.

The package is plain Python with no ZenML import; ZenML steps and pipelines live in the
top-level ``steps`` and ``pipelines`` packages and call into it.
"""

__version__ = "0.1.0"
