"""Model family: pure PyTorch; knows nothing of how it is distributed."""
