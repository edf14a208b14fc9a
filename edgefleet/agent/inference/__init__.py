"""Serving the installed model: runtimes behind one interface and the local OIP endpoint."""
