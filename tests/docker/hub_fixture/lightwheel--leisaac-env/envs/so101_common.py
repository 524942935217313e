"""A sibling module of an entry file (imported by so101_pick_orange.py)."""

EPISODE_STEPS = 50
