"""blt-scale: distributed training of Byte Latent Transformers."""
