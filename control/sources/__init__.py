"""Where the control plane gets the resources it serves."""
