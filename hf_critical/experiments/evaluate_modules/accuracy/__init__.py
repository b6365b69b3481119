"""The accuracy metric module; see accuracy.py. This file makes setuptools ship the folder."""
