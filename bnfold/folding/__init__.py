"""The pass: its context and options, the moves, layout, Cast sandwiches, reparameterization,
the standalone BN, the fold maths and the rules.

Imports graph/ and the shared report and words; never model_io/, check/, runs/ or cli/.
"""
