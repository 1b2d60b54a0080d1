"""Teacher recovery: the method working, not only running (gmseg.experiments.teacher_demo).

A learner that sees k=4 teacher-labelled samples must recover the teacher's
labelling on fresh samples far above its initial agreement, and beat a
segmenter trained on the 4 labelled samples alone for the same number of
updates. Agreement is averaged over the evaluations at steps 200, 225 and
250, because single evaluations move by +-0.04 from one to the next.

Measured (2-core CPU, default XLA flags): init mIoU 0.114 (chance for 4
balanced classes is about 0.14); means over steps 200-250: annotator 0.316,
LAGM segmenter 0.291, supervised 0.256 (it peaks near 0.29 at 25 steps, then
overfits the 4 samples). Thresholds leave room for other XLA builds, whose
float rounding changes the (chaotic) trajectory: a later measurement with
default flags gave 0.295 / 0.260 / 0.260, and under the suite's cheaper XLA
passes (tests/conftest.py: optimisation level 1) 0.289 / 0.246 / 0.261, which
passes with margins of 0.006-0.008 on the segmenter and the annotator-vs-
supervised checks (deterministic on one XLA build; level 0 gave 0.286 /
0.260 / 0.258).
"""
import numpy as np

from gmseg.experiments import teacher_demo


def test_teacher_recovery_beats_supervised():
  cfg = teacher_demo.DemoConfig(steps=250, eval_every=25, eval_from=200)
  out = teacher_demo.run(cfg)
  print("teacher recovery:", out)
  assert out["steps"] == [0, 200, 225, 250]
  init = out["annotator"][0]
  ann, seg, sup = (float(np.mean(out[k][1:])) for k in ("annotator", "segmenter", "supervised"))
  assert init < 0.16
  # Far above initialisation: about double the agreement.
  assert ann > 0.26 and ann > 2 * init
  assert seg > 0.24
  # The method beats training on the 4 labelled samples alone.
  assert ann > sup + 0.02
  # Phase-one S follows A with a lag and dips when A changes (0.18-0.33
  # between evaluations): at least on par with the supervised baseline.
  assert seg > sup - 0.02
