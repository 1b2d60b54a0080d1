"""Progress messages with a fake clock, and the NaN/Inf guard."""
import jax.numpy as jnp
import numpy as np
import pytest

from gmseg import progress


class FakeClock:

  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


def test_rate_and_eta_exclude_compile_and_pauses():
  clock = FakeClock()
  p = progress.Progress(total_steps=1000, start_step=0, every_s=10, clock=clock, log=False)
  clock.t += 60.0  # first step: compiling
  assert p.update(1) is None
  msgs = []
  for step in range(2, 42):
    clock.t += 0.5  # 2 it/s
    msgs.append(p.update(step))
  reported = [(s, m) for s, m in zip(range(2, 42), msgs) if m]
  # Due every 10 s = 20 steps: at steps 21 and 41.
  assert [s for s, _ in reported] == [21, 41]
  assert reported[0][1] == "step 21/1000, 2.00 it/s, ETA 00:08:10"  # 979 / 2 s
  with p.paused():
    clock.t += 300.0  # evaluation
  msgs = []
  for step in range(42, 82):
    clock.t += 0.25  # now 4 it/s
    msgs.append(p.update(step))
  # Window from step 1: 80 steps in 10 + 10 + 10 s; the 300 s pause is left out.
  assert msgs[:-1] == [None] * 39
  assert msgs[-1] == "step 81/1000, 2.67 it/s, ETA 00:05:45"
  assert p.rate == pytest.approx(80 / 30)


def test_every_n_and_final_step():
  clock = FakeClock()
  p = progress.Progress(total_steps=10, start_step=4, every_n=3, clock=clock, log=False)
  out = {}
  for step in range(5, 11):
    clock.t += 2.0
    out[step] = p.update(step)
  assert [s for s, m in out.items() if m] == [8, 10]  # every 3 steps, and the last
  assert out[8] == "step 8/10, 0.50 it/s, ETA 00:00:04"
  assert out[10] == "step 10/10, 0.50 it/s, ETA 00:00:00"


def test_no_rate_yet_and_long_eta():
  clock = FakeClock()
  p = progress.Progress(total_steps=10**6, every_n=1, clock=clock, log=False)
  p.update(1)
  clock.t += 0.0  # no time passed: no rate rather than a division by zero
  assert p.update(2) == "step 2/1000000, -- it/s, ETA --:--:--"
  clock.t += 10.0
  assert p.update(3) == "step 3/1000000, 0.20 it/s, ETA 1388:53:05"
  assert progress.format_duration(3661.4) == "01:01:01"


def test_check_finite_names_step_and_keys():
  progress.check_finite({"loss": jnp.float32(1.0), "n": np.int32(3),
                         "iou": np.array([0.1, 0.2])}, step=5)
  with pytest.raises(FloatingPointError) as err:
    progress.check_finite({"loss": jnp.float32(np.nan), "ok": 1.0,
                           "grad_norm": np.float64(np.inf),
                           "iou": np.array([0.1, np.nan, -np.inf])}, step=17)
  msg = str(err.value)
  assert "step 17" in msg
  assert "loss=nan" in msg and "grad_norm=inf" in msg and "iou=inf/nan" in msg
  assert "ok" not in msg.split(":")[1]
