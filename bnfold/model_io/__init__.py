"""Model files: open and validate, external data, lazy reading, staging, atomic save.

Imports graph/ and the shared errors; never folding/, check/, runs/ or cli/.
"""
