"""Analysis: evaluation metrics and result files, FLOPs and benchmarks, the paper's figures (DTM offsets, attention
maps), Grad-CAM. The top group: may import training, modelio and data."""
