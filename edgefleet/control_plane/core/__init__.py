"""What every part of the control plane stands on: settings, database and tables, auth, errors."""
