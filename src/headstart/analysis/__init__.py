"""Measurements that help decide and understand a fine-tuning run.

    check.py      pre-flight of the data: counts, imbalance, unreadable files, duplicates and train/val leakage
    labels.py     likely mislabelled training images (check --labels): cleanlab on out-of-fold probabilities
    probe.py      what transfers: linear-probe accuracy per stage group, and BatchNorm-statistics domain shift
    recommend.py  a strategy with hyperparameters, chosen from those measurements, with the reasons
    drift.py      what fine-tuning forgets: weight drift, CKA to the pretrained features, old-task accuracy
"""
