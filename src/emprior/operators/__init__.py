"""Linear observation operators y = A x + e (Eq. 1), one registry of operator kinds."""
