"""Running a model over a scene: tiling, resampling, runtimes, and the segmentation engine."""
