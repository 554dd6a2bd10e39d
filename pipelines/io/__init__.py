"""DICOM in: image series, SEG and RTSTRUCT read onto the source grid, their references and a
folder sorted into inputs."""
