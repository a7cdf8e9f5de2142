"""Per-task predictors: what answers each label task of a tuned run, chosen on validation.

Multi-task LoRA SFT trains the language model on every task. For label tasks
(intent, sentiment, custom classification tasks) a run also trains cheaper
discriminative predictors on the same labelled conversations and, on a held-out
validation split, picks per label field the one that answers best:

* ``lm``: the tuned model, constrained to the label set (``lm_retrieval`` when the
  run was trained with ``data.few_shot``: its prompts carry retrieved examples);
* ``head``: logistic regression on a sentence encoder contrastively tuned on the
  run's labels (:mod:`convtune.predictors.encoder`);
* ``knn``: similarity-weighted nearest neighbours on the same encoder;
* ``ensemble``: the LM's label distribution and the head's probabilities combined
  with a weight picked on validation.

The choice, with the whole validation table, is written to
``RUN_DIR/predictors/selection.json``; ``convtune evaluate``, the server's
analyze route and the jobs API answer with the recorded predictor
(:func:`convtune.predictors.answer.answer_with_predictors`).
"""

from convtune.predictors.store import PREDICTORS_DIR, RunPredictors, load_predictors

__all__ = ["PREDICTORS_DIR", "RunPredictors", "load_predictors"]
