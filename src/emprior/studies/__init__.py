"""Stand-alone studies: Fig. 2, sampler accuracy (Table 4), sampler cost (Table 5)."""
