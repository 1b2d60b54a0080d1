r"""Converts an official stylegan2-ada-pytorch snapshot to a gmseg directory.

  .venv/bin/python launch/convert_stylegan2.py --pkl network-snapshot.pkl --out ckpt/ffhq256

No torch needed. The directory (params.npz + config.json) then loads by name:
`gmseg.generator_registry.get('stylegan2', path='ckpt/ffhq256')`.
TensorFlow-era StyleGAN2 pickles must first go through the official
repository's `legacy.py --source OLD.pkl --dest NEW.pkl`.
"""
import argparse
import sys

from gmseg.convert import stylegan2_pkl


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pkl", required=True, help="Official snapshot .pkl.")
  parser.add_argument("--out", required=True, help="Output directory.")
  parser.add_argument("--network", default="G_ema", choices=("G_ema", "G"),
                      help="Which generator of the snapshot (the paper: G_ema).")
  args = parser.parse_args(argv)
  try:
    arch = stylegan2_pkl.convert_pkl(args.pkl, args.out, args.network)
  except (ValueError, OSError) as e:
    # StyleGAN2PklError (a ValueError) for the pickle itself; ValueError from
    # the architecture (e.g. 'resnet') or the state dict (names, shapes, a
    # resample filter other than [1,3,3,1]); OSError for the files.
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"Wrote {stylegan2_pkl.describe_arch(arch)} to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
