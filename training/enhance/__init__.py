"""Training the enhancer: a conditional diffusion UNet (local) and a global-correction head."""
