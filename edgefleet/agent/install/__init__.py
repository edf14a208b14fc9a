"""Installing a bundle: the journal, the two slots, the smoke test, probation and shadow mode."""
