"""Latents out: encode a data set to latent shards (`encode`), decode them back (`decode`), their per-channel
statistics and the diffusion scale/shift (`stats`), and tiled/chunked encode/decode for large inputs (`tiling`)."""
