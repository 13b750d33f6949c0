"""Active learning: where the model is unsure, proposals for an analyst to label there."""
