"""Diffusion on arrays and callables (no model or data imports): noise schedules and the
eps/v conversions (schedules.py), the MSD training objective of eq. 7 (objectives.py), and
jitted DDPM / DDIM / DPM-Solver++(2M) samplers with classifier-free guidance (samplers.py).
"""
