"""The demos on top of everything else: ``self1e demo`` (evaluate the shipped model on fresh
RefShapes samples, with pictures) and the web page."""
