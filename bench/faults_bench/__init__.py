"""bench/faults.py in parts: fleet, stack, netns, faults, measure, report, main."""
