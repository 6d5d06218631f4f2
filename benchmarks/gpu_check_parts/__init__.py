"""The parts of the GPU check behind ``benchmarks/gpu_check.py``."""
