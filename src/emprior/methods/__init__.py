"""EM methods (Algorithm 1) as plug-ins: each declares its stages and owns q_0, the E-step and the M-step."""
