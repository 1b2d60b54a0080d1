r"""Teacher recovery demo: LAGM recovers a known random annotator from k=4 labels.

  .venv/bin/python launch/teacher_demo.py --steps=300

Prints, every --eval_every steps, the agreement (mIoU) with the teacher on
fresh samples of the learnt annotator, the LAGM segmenter and a segmenter
trained on the 4 labelled samples alone (gmseg/experiments/teacher_demo.py).
"""
from absl import flags

from gmseg import cli
from gmseg.experiments import teacher_demo

STEPS = flags.DEFINE_integer("steps", 300, "A/S iterations (= supervised updates).")
EVAL_EVERY = flags.DEFINE_integer("eval_every", 50, "Evaluation interval.")
K = flags.DEFINE_integer("k", 4, "Teacher-labelled samples the learner gets.")
SEED = flags.DEFINE_integer("seed", 0, "Seed.")


def main(argv):
  del argv
  cfg = teacher_demo.DemoConfig(steps=STEPS.value, eval_every=EVAL_EVERY.value,
                                k=K.value, seed=SEED.value)
  out = teacher_demo.run(cfg)
  print(f"after {cfg.steps} steps: annotator {out['annotator'][-1]:.3f}, LAGM segmenter "
        f"{out['segmenter'][-1]:.3f}, supervised {out['supervised'][-1]:.3f} "
        f"(init {out['annotator'][0]:.3f}; {out['seconds']:.0f} s)")


if __name__ == "__main__":
  cli.run(main)
