"""Hydra sweeper that does not duplicate jobs for methods that ignore the selector."""
