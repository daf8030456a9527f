"""Stacked sweeps: the jobs of a Hydra sweep that differ only in hyper-parameters train as one
stacked model (each weight ``[K, ...]``, one batched product per layer for all K), and each ends as
its own run.

``groups``: which jobs stack and why others do not; ``step``: the stacked step; ``inspect``:
norms, update ratios and histograms of all jobs at once; ``jobs``: what each job writes;
``train``: the loop. The Hydra launcher is ``hydra_plugins.microtrain_stacked``.
"""
