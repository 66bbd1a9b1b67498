"""Monitoring: what a version is asked, against what it learned from.

- :mod:`.inference_log`: the captured records' collection and its bucket format (the
  only part the API's workers import);
- :mod:`.baselines`: the training statistics kept with each version;
- :mod:`.drift`: the statistics and the report ``bridge monitor`` and the API give;
- :mod:`.plots`: the histograms the console and ``bridge monitor --plots`` show.
"""
