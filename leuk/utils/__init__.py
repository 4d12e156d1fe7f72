"""Run plumbing shared by the entry points."""
