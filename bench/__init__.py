"""Benchmarks: the speed and size figures owlgate promises, measured on this machine.

Run by ``owlgate bench``; never asserted as timings inside the test suite.
"""
