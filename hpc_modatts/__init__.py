"""hpc-modatts: cross-modality tumour segmentation (MoDATTS) on SLURM GPU clusters."""

__version__ = "0.1.0"
