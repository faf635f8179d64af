"""Exporting a finished run: a NIR graph of the deployed network (``nir_graph``) and its integer sidecar."""
