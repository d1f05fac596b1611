"""The M-step's training loop: denoising score matching (Eq. 4), resumable."""
