"""edgectl: kubectl-style command line over the library."""
