"""Calibration sets, INT8 calibrators and accuracy-drop reports for quantized engines."""
