"""The coloured-shapes world: scenes and captions (``world``) and a geometric detector (``scorer``)."""
