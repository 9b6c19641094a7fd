"""Networks, noise schedules, samplers and helpers shared by the problem scripts."""
