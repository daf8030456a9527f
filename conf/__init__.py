"""microtrain's Hydra configs, shipped inside the package (pkg://microtrain.conf)."""
