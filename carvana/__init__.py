"""Carvana Image Masking Challenge, end to end: data, U-Nets, training, prediction, submission.

Importing the package sets up its console (carvana.core.console): its messages print as plain
lines whether it runs from the command line or as a library.
"""
from carvana.core.console import setup_console

setup_console()
