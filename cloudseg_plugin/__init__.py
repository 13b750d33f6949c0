"""QGIS side of cloudseg: provider, algorithms, GUI. The only package importing qgis."""
