"""Graph passes over ONNX models (installed as haqc.passes): load, canonicalize, extract, quantize."""
