"""The sans-I/O core: state and decisions with an injected clock; no threads, sockets or sleeps."""
