"""The parts of ``protocol=continual_pretraining`` (FoMo-in-Flux, spec ``fomo_in_flux.md`` sections 4-7), one job each:

- :mod:`.mixture`: the ratios of the three pools and the exact sub-batch arithmetic of each step;
- :mod:`.pools`: image-text pools (update, buffer of earlier tasks, pretraining) and the draws from them;
- :mod:`.schedule`: the learning-rate schedules, restarted (or meta-scheduled) per task;
- :mod:`.budget`: per-step FLOPs, the memory multiplier and each method's steps per task (MAFs);
- :mod:`.step`: one optimisation step (InfoNCE over the mixed batch, AdamW, clipping, AMP);
- :mod:`.evaluation`: per-dataset zero-shot scores, the stratified subset, A_KA, A_ZS and their geometric mean.
"""
