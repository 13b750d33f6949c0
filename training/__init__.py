"""Training, evaluation and export of cloud-segmentation models (pure Python + torch).

Never imports QGIS; may use :mod:`cloudseg.backend` for raster I/O and model cards.
"""
