"""Small shared utilities: registries, seeding, devices, atomic file writes."""
