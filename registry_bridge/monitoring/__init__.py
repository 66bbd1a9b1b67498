"""Monitoring: what a version is asked, against what it learned from.

- :mod:`.inference_log`: the captured records' collection and its bucket format (the
  only part the API's workers import);
- :mod:`.baselines`: the training statistics kept with each version;
- :mod:`.drift`: the statistics and the report ``bridge monitor`` and the API give;
- :mod:`.plots`: the histograms the console and ``bridge monitor --plots`` show;
- :mod:`.feedback_rows` and :mod:`.feedback`: labels sent back (``POST /feedback``,
  ``bridge feedback``), checked, joined to captured requests and stored in ``feedback``;
- :mod:`.quality`: live accuracy per version from those labels (``bridge monitor``).
"""
