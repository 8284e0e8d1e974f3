"""Learners that start from a network pre-trained on the base classes (lessons 07-09).

- ``pretrain.py``: one classifier over every base class (step 1 of meta-transfer learning).
- ``meta_transfer.py``: Scaling & Shifting of the frozen backbone, the hard-task meta-batch
  (Sun et al. 2019).
- ``finetune.py``: the baselines on the same backbone: fine-tune the head or everything, a linear
  probe, nearest centroid.
- ``joint.py``: the MAML paper's sinusoid baseline, one network trained on all tasks jointly.
"""
