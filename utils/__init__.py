"""Data sets, image I/O, checkpoints, seeding and device selection shared by the scripts."""
