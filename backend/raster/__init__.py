"""Rasters in and out: band names, SAFE products, windowed scene reading, COG writing, polygons."""
