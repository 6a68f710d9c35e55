"""mlre: the ML reliability platform's core logic (Prefect-free, importable, side-effect free)."""

__version__ = "0.1.0"
