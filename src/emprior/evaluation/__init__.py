"""What each EM iteration is judged by: metrics, the audit, the E-step check."""
