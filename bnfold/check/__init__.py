"""The check: which values to compare (sites), on what inputs, on which sessions, how (comparison), and the verdict.

Imports graph/, model_io/ and the shared report and words; never folding/ (a test holds it to that), runs/ or cli/.
"""
