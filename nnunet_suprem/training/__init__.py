"""nnU-Net trainer classes and their building blocks (losses, schedules)."""
