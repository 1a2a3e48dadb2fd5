"""Everything written under the data root: atomic files, the output index, metrics and run log."""
