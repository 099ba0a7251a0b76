"""The paper's §6 evaluation protocol as library code: arrays and callables in, results out.

Building blocks:

* ``methods``: the method registry (RI, Grad-CAM, Grad-CAM++, Score-CAM, ACE and the
  controls, one entry each), the channel-weight methods in one shape (RI via
  ``ri_at_inputs`` and ``RIOptions``) and their heat maps;
* ``ace_adapter``: ACE's concept discovery and kept segments;
* ``routing``: k-means inputs, which interpretation serves which image, similar images;
* ``scoring``: masking (``MaskingOptions``) and AD / AI;
* ``faithfulness``: deletion / insertion curves, ROAD and AD / AI at several keep
  fractions of one map set (``FaithfulnessOptions``; ``ri_jax.faithfulness`` computes them);
* ``batching``, ``statistics``: fixed-size chunks and argument checks; mean ± std.

Protocols, each a function returning a result with ``to_json()`` (no file I/O):
``table1.run_table1``, ``table2.run_table2``, ``figure4.run_figure4``,
``figures5_6.run_figures5_6``, ``case_studies.run_case_studies``; ``report.render_results``
renders RESULTS.md from the loaded result JSON.
"""
