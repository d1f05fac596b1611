"""Clean data sets (one per module), the observations y = A x + e, and their HDF5 files."""
