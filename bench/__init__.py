"""Benchmarks behind `python main.py benchmark`: training, input pipeline and inference speed."""
