"""Float model -> the artifact a firmware profile can run. Used by the control plane only."""
