"""Dataset conversion to nnU-Net raw format: AbdomenAtlas, TotalSegmentator, and merging partial-label datasets."""
