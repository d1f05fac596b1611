"""Tables and figures with the paper's numbers side by side."""
