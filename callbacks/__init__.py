"""Lightning callbacks implementing the compression methods (thin wrappers over ``kp_lightning``)."""
