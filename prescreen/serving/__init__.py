"""Serving: the BentoML service and the FastAPI app mounted in it."""
