"""Datasets: sources of original files -> one HDF5 file per dataset -> batches on the device."""

from hpclab.data.hdf5 import DatasetArrays, H5Split, describe, write_hdf5
from hpclab.data.loader import DataInfo, RunData
from hpclab.data.prepare import DataMissing, hdf5_path, stage

__all__ = [
    "H5Split",
    "DatasetArrays",
    "describe",
    "write_hdf5",
    "RunData",
    "DataInfo",
    "DataMissing",
    "hdf5_path",
    "stage",
]
