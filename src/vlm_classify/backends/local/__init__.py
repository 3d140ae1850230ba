"""Models that run on this machine with torch: `clip/` (open_clip, SigLIP, transformers CLIP)
and `cnn/` (timm). Nothing here is imported until such an arm runs (see `backends.registry`)."""
