"""The computation: preprocessing, ROI variants, radiomics features (pyradiomics; IBSI 1 image
processing), quality control and the validated models."""
