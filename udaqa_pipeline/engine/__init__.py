"""Stage two: train UD-AQA from the stage-one cache (no decoding, no I3D forward).

The library entry is :func:`udaqa_pipeline.engine.run.train` (lookups, then :func:`~.loop.train_run`).
One loop, read top to bottom (nanoGPT style, :mod:`.loop`). Policies:

- Labels: each step draws ONE judge of each sample at random as y (a fresh draw every epoch), scaled
  to [0, 1] by the run's label scaling: ``train.label_range = [lo, hi]`` when the stage gives the
  judge scale (MTL-AQA, FineDiving: 0..10), else the min/max of the training judges; with
  ``train.label_scale = "per_group"`` (AQA-7) one range per group (action) from its training samples.
- Views: where the cache holds V > 1 augmented feature views, each sample draws one view per epoch
  and its video tensor gets the same flip/shift (``features.apply_view``). Evaluation uses view 0.
- Folds: ``fold K`` trains on every fold but K (and on train-only rows, fold -1) and tests on K.
  ``cv=N`` replaces the cache's folds by a seeded N-fold split of all samples. ``train.per_group``
  trains one model per group (JIGSAWS task) in ``<run>/<group>/``.
- Splits: ``split="official"`` uses the folds the annotation files give (the cache's ``fold``
  column); ``split="louo"`` makes one fold per subject (JIGSAWS surgeon: leave-one-user-out, fold k
  = the k-th surgeon by letter), so no surgeon is in train and test of one fold; ``split="dev"``
  scores a recipe on the official training sets only (:func:`dev_fold`), so recipes can be chosen
  without ever reading a test fold.
- Protocols: ``honest`` (default) never looks at the test fold; how it picks the model is
  ``train.select``:
  * ``"val"``: carve a seeded ``train.val_fraction`` validation split out of the training samples
    and keep the epoch with the best validation ``train.select_metric`` (Spearman, or CRPS of the
    sampled final scores);
  * ``"inner_cv"``: ``train.inner_folds``-fold cross-validation inside the training samples picks the
    epoch count (the best out-of-fold ``select_metric`` of every epoch, pooled over the inner folds,
    smoothed over ``train.inner_smooth`` epochs), then the model is refit on every training sample
    for that many epochs and the end of that fit is kept;
  * ``"last"``: train every training sample for ``train.epochs`` and keep the end.
  With ``"inner_cv"`` and ``"last"`` the kept model is the uniform average of the weights at the
  end of the last ``train.average_last`` epochs (0: the last weights): the heads' and a trainable
  source's (a fine-tuned I3D or its top) alike.
  ``paper`` keeps the epoch with the best test Spearman, as the published code does. The protocol
  is stored with the run and tags every reported number.
- Selection scores use the predicted final score = mean over ``train.eval_samples`` seeded prior
  draws of the rule applied to T sampled judges.
- Optimisation: Adam (``train.optimizer = "adam"``, L2 weight decay as in the paper) or AdamW
  (decoupled decay); learning rate constant or ``train.lr_schedule = "cosine"`` (per epoch, from
  ``lr`` to 0 over ``train.epochs``: :func:`learning_rate`). A non-finite loss stops the run with a
  :class:`TrainingError` naming the epoch, the batch and its samples.
- Determinism: one seed; the data order, judge and view draws come from a ``torch.Generator`` and
  dropout / latent noise from torch's global RNG; both states are checkpointed every epoch, so a
  killed run resumes to the same numbers as an uninterrupted one (CPU).
- Checkpoint: ONE file ``<run>/checkpoint.pt`` rewritten atomically after every
  ``train.checkpoint_every`` epochs (default 1) and after the last (:mod:`.runfiles`).
  ``log.jsonl`` gets one JSON line per epoch, written after the checkpoint that covers it, so a
  killed run resumes from its last checkpoint and its log never runs ahead.
- DDP: under ``torchrun`` (WORLD_SIZE > 1) each global batch is split across ranks (gloo on CPU,
  nccl on CUDA); losses are all-reduced so every rank takes the same curriculum decisions; after
  each epoch rank 0's buffers (BatchNorm statistics) of the heads and of the trainable source are
  broadcast; a trainable source's gradients are averaged across ranks (DDP wraps the heads only);
  rank 0 writes the checkpoint and the log.
- What scoring needs without the cache: the checkpoint (and ``config.json``) carry
  ``feature_config``, the cache manifest's frames/clips/preprocess/cache sections the features
  were extracted with, and ``scoring_rules``, {rule: panel size} of the run's samples, most common
  rule first (see :func:`~udaqa_pipeline.data.trainset.scoring_rules`).

Feature sources: the loop reads inputs through an object with ``n_views`` and
``batch(indices, views) -> (features (B, K, M), video (B, L, 3, h, w))`` and an optional trainable
``module`` (nn.Module or None). :class:`~udaqa_pipeline.data.trainset.CacheSource` reads the cache; a fine-tuning wrapper can
compute features from frames with I3D and hand its I3D in as ``module`` (optimised and
checkpointed with the heads).
"""
