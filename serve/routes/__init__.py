"""Thin routers: validate (protocol models + serve.bridge limits), render, hand to the engine."""
