"""Engine: the training loop, schedules, checkpoints and run folders."""
