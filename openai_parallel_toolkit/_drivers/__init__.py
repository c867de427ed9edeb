"""Drivers: the I/O around the sans-I/O core (HTTP clients per key, waiting)."""
