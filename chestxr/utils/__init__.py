"""Small helpers: hardware detection, run folders, atomic file writes."""
