"""Not product: the synthetic liver study, the synthetic cohort behind the demonstration model and
the ``radiomics-node demo`` run that sends the study to a node of its own."""
