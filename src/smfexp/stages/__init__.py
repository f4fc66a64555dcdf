"""Stage 1, built once and cached (:func:`~smfexp.utils.cache.load_or_build`): the memory
retrofit or calibration, background statistics, base scores. Methods declare which they need."""
