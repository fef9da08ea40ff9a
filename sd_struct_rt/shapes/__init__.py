"""The coloured-shapes world: scenes and captions (``world``) and a geometric detector (``scorer``)."""

# The embedded models trained on this world, whose images the shapes scorer can judge:
# ``shapes`` learns its text encoder with its UNet; ``shapes-clip`` reads a frozen contrastive CLIP.
MODELS = ("shapes", "shapes-clip")
