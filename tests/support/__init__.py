"""What the suite's tests share: the one rule for skips, processes, /proc and models."""
