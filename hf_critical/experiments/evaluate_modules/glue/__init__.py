"""The GLUE metrics module; see glue.py. This file makes setuptools ship the folder."""
