"""What the device reports: counters, drift windows, and the spool that loses nothing offline."""
