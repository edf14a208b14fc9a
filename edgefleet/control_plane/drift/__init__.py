"""The drift loop: fleet reports, the hysteresis rule, retraining hooks and requests, plots."""
