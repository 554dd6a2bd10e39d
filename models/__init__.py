"""Model packages: load, check, predict, train. Knows nothing of DICOM, imports neither node nor
pipelines."""
