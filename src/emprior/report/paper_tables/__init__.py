"""The paper's published numbers (diem-arxiv Tables 1, 4, 5) as CSV."""
