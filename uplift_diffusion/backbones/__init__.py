"""Backbones: VAE adapters (raw latents), the taef2 autoencoder, ViT feature wrappers."""
