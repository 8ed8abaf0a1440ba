"""Test-wide settings."""

import torch

# Tiny models on a shared 2-core machine run many times faster on one thread than on two
# threads that wait for each other.
torch.set_num_threads(1)
