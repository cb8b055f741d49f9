"""The graph, as both onnx and onnx-ir see it: op types, constant evaluation, value types, editing, walking.

Imports only the shared errors and words; everything else may import it.
"""
