"""One run over a model: a file (`fold_file`: open, fold, save staged, check, commit) or a
model in memory (`fold`), with the check and the backing out of failing folds.

Imports model_io/, folding/, check/ and graph/; imported by the API, batch mode and the CLI.
"""
