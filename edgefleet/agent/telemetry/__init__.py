"""What the device reports: counters, drift windows, the spool that loses nothing offline,
and the log ring it serves on request."""
