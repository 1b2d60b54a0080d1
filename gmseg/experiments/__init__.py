"""Experiments: drivers that run the method and report on it.

Each module composes the method's modules (`gmseg.annotate`,
`gmseg.downstream`, `gmseg.supervised`, `gmseg.restore`, ...) into one study
and writes its results; the method never imports from here
(tests/test_layout.py checks it).

  faces         the main job: few-shot face parts (DCGAN + FASSEG), LAGM
                against the supervised and rendered-label baselines.
  benchmark     sweeps `faces` over k and seeds (FG-mIoU table and plot) and
                times the A, S and supervised steps side by side.
  teacher_demo  teacher recovery: the method recovering a known annotator.
"""
