"""Exports a trained AlexNet: TF Serving SavedModel and TFLite."""
