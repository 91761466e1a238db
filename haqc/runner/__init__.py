"""The device runner: what a device says of itself and times for haqc. Imports onnxruntime and numpy only."""
