"""Writers of small datasets in the real on-disk formats of their originals (for tests).

One module per format family; each writer returns the arrays it wrote so tests can compare.
"""
