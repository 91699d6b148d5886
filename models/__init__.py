"""Networks, presets, checkpoints and the landmark -> label-map renderers shared by training and serving."""
