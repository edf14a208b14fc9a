"""Periodic jobs the control plane runs on its scheduler."""
