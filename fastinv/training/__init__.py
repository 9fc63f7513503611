"""Training of the small pixel-space rectified-flow model that ships as fastinv's default."""
