"""Downstream evaluation: metrics, zero-shot, retrieval, linear probe, reports.

Modules (import the one you need; nothing is imported here so that ``import mammoclip.evaluate``
stays cheap):

* :mod:`~mammoclip.evaluate.metrics` -- AUC, AUPRC, accuracy, balanced accuracy, sensitivity at a
  fixed specificity, macro-F1, ECE; per-breast aggregation; patient-level bootstrap CIs.
* :mod:`~mammoclip.evaluate.tasks` -- task registry: task name -> manifest column and classes.
* :mod:`~mammoclip.evaluate.splits` -- patient-level label fractions, validation carving, leak guard.
* :mod:`~mammoclip.evaluate.features` -- frozen feature extraction (eval mode, no_grad) with a cache.
* :mod:`~mammoclip.evaluate.zeroshot` -- ``run_zeroshot``: prompt-ensemble zero-shot classification.
* :mod:`~mammoclip.evaluate.retrieval` -- ``run_retrieval``: image <-> report Recall@K.
* :mod:`~mammoclip.evaluate.probe` -- ``run_probe``: true linear probe, data efficiency, init baselines.
* :mod:`~mammoclip.evaluate.report` -- results.json, PNG plots, index.html, ``compare_runs``.

Fine-tuning lives in :mod:`mammoclip.train.finetune` (it needs the training loop); embeddings in
:mod:`mammoclip.embed`. The protocols are described in ``docs/evaluation.md``.
"""
