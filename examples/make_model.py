"""Write a tiny Keras model for the examples: python examples/make_model.py [PATH]."""

import os
import sys

from forksafe.testing import run_in_subprocess, save_tiny_model

if __name__ == "__main__":
    target = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "model.keras")
    # Built in a subprocess, so that nothing here ever starts TensorFlow.
    tiny = run_in_subprocess(save_tiny_model, os.path.dirname(target), timeout=180)
    os.replace(tiny.path, target)
    print(target)
